"""Observability's cost to dispatch (issue 14, "Cost"): a Prometheus scrape of `/metrics` and an
open dashboard tab must not measurably slow the workers.

    .venv/bin/python bench/observed.py [--rounds 3] [--instances 200] [--per-instance 20] [--cost-requests 50]

1. Drain under observation: `instances × per-instance` messages queued before a worker
   (8 threads) starts, as drain.py's "many instances" case, while observers poll the stack over
   HTTP from threads of this script (one thread per request, fixed rate, first request as the
   worker starts, last when the drain ends). Three variants:
   - none: no observer;
   - production cadence: Prometheus' two targets every 15 s, the API's `GET /metrics` and the
     worker's own (WORKER_METRICS_PORT, set in every variant, as docs/deploy.md deploys it); a
     dashboard tab as its JavaScript polls: `GET /dashboard` (HTML, `Accept: text/html`, the
     admin token as a bearer) every 10 s and `GET /dashboard/throughput.json` every 15 s; and one
     busy instance's page `GET /dashboard/instances/<id>` every 5 s (an operator watching it);
   - heavy: the same five requests, each every 1 s, so that a cost is large enough to see.
   Variants alternate back to back on fresh databases, in `rounds` rounds with the order rotated;
   each variant is compared with "none" of the same round (the median of those ratios), never
   across runs. Per run: messages/s (first claim to last send), CPU ms per message of the worker
   process and of the whole PostgreSQL server, the API process's CPU seconds over the drain, and
   the observers' requests and latency.
2. Cost per request, outside a drain: each request `cost-requests` times back to back on a
   database holding the same backlog, queued and then all sent (and the `/metrics` gauges' query
   alone, which a scrape runs at most once every 5 s per API process), with CPU ms per request of
   the process serving it (the API, or the worker for its own /metrics) and of PostgreSQL: what a
   cadence costs, without dispatch's noise. `--rounds 0` prints this table alone,
   `--cost-requests 0` leaves it out.

CPU per message (from /proc) is the figure this noisy 2-core machine moves least.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg
from drain import check_order, queue_backlog
from harness import Stack, cpu_seconds, database, postgres_cpu_seconds, print_table, wait_until, workdir

from service.core import queries
from tests.stack import free_port


class Poll(NamedTuple):
    name: str
    path: str  # with <id> for the watched instance
    every: float  # seconds
    html: bool  # a dashboard page (Accept: text/html, the admin token as a bearer)
    worker: bool = False  # on the worker's WORKER_METRICS_PORT, not the API


def polls(every: float | None) -> list[Poll]:
    """Prometheus' two targets and a dashboard tab, at production cadence or each every `every` s."""
    return [Poll("GET /metrics (API)", "/metrics", every or 15, False),
            Poll("GET /metrics (worker)", "/metrics", every or 15, False, worker=True),
            Poll("GET /dashboard", "/dashboard", every or 10, True),
            Poll("GET /dashboard/throughput.json", "/dashboard/throughput.json", every or 15, False),
            Poll("GET /dashboard/instances/<id>", "/dashboard/instances/<id>", every or 5, True)]


VARIANTS: dict[str, list[Poll]] = {
    "none": [],
    "production cadence": polls(None),
    "heavy (each every 1 s)": polls(1),
}


def base_url(stack: Stack, poll: Poll) -> str:
    return f"http://127.0.0.1:{stack.env['WORKER_METRICS_PORT'] if poll.worker else stack.port}"


def headers(stack: Stack, poll: Poll) -> dict[str, str]:
    if not poll.path.startswith("/dashboard"):
        return {}
    token = {"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"}
    return {**token, "Accept": "text/html"} if poll.html else token


class Observer(threading.Thread):
    """One endpoint polled at a fixed rate until stopped; latency of every answer (all must be 200)."""

    def __init__(self, stack: Stack, poll: Poll, instance_id: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.poll = poll
        self.path = poll.path.replace("<id>", instance_id)
        self.client = httpx.Client(base_url=base_url(stack, poll), headers=headers(stack, poll), timeout=60)
        self.stop_event = stop
        self.latencies: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        start = time.monotonic()
        slot = 0
        with self.client:
            while not self.stop_event.is_set():
                began = time.perf_counter()
                try:
                    response = self.client.get(self.path)
                except httpx.HTTPError as error:
                    self.error = f"{self.path}: {error!r}"
                    return
                self.latencies.append(time.perf_counter() - began)
                if response.status_code != 200 or not response.content:
                    self.error = f"{self.path}: {response.status_code} {response.text[:200]}"
                    return
                # Fixed rate: the next slot, skipping any missed while a request took long.
                slot = max(slot + 1, int((time.monotonic() - start) / self.poll.every) + 1)
                self.stop_event.wait(start + slot * self.poll.every - time.monotonic())


class Run(NamedTuple):
    rate: float  # messages/s
    worker_cpu_ms: float  # per message
    postgres_cpu_ms: float  # per message
    api_cpu_s: float  # over the drain
    ordered: bool
    latencies: dict[str, list[float]]  # seconds, by Poll.name


def stack_with_backlog(work: Path, url: str, instances: int, per_instance: int) -> tuple[Stack, list[str]]:
    """The API started, instances created and their messages queued; no worker yet. Every
    variant's worker serves its own counters (WORKER_METRICS_PORT), scraped or not."""
    env = {"MESSAGE_QUEUE_WORKER_THREADS": 8, "LOG_LEVEL": "WARNING", "WORKER_METRICS_PORT": free_port()}
    stack = Stack(url, work / f"stack-{time.monotonic_ns()}", env)
    stack.start_api()
    try:
        return stack, queue_backlog(stack, instances, per_instance)
    except BaseException:
        stack.stop()
        raise


def wait_drained(stack: Stack, total: int) -> None:
    wait_until(lambda: stack.one("SELECT count(*) AS n FROM messages WHERE status = 'completed'")["n"] == total,
               3600, f"{total} messages to complete", interval=0.5)


def observed_drain(work: Path, instances: int, per_instance: int, observe: list[Poll]) -> Run:
    """drain.py's `drain()`, with observers running from the worker's start to the last send."""
    total = instances * per_instance
    with database(work / f"db-{time.monotonic_ns()}") as url:
        stack, ids = stack_with_backlog(work, url, instances, per_instance)
        try:
            assert stack.api is not None
            stop = threading.Event()
            observers = [Observer(stack, poll, ids[0], stop) for poll in observe]
            postgres_before = postgres_cpu_seconds(url)
            api_before = cpu_seconds(stack.api.pid)
            worker = stack.start_worker()
            worker_before = cpu_seconds(worker.pid)
            for observer in observers:
                observer.start()
            try:
                wait_drained(stack, total)
            finally:
                stop.set()
                for observer in observers:
                    observer.join()
            worker_cpu = cpu_seconds(worker.pid) - worker_before
            api_cpu = cpu_seconds(stack.api.pid) - api_before
            postgres_cpu = postgres_cpu_seconds(url) - postgres_before
            # Measured: a graceful stop (seconds, per run) has nothing left to do; the database goes.
            stack.stop_process(worker, signal.SIGKILL)
            errors = [o.error for o in observers if o.error]
            if errors:
                raise RuntimeError("; ".join(errors))
            span = stack.one("SELECT min(started_at) AS first, max(sent_at) AS last FROM messages "
                             "WHERE status = 'completed'")
            return Run(total / (span["last"] - span["first"]).total_seconds(), 1000 * worker_cpu / total,
                       1000 * postgres_cpu / total, api_cpu, check_order(stack, ids),
                       {o.poll.name: o.latencies for o in observers})
        finally:
            stack.stop()


def cost(stack: Stack, poll: Poll, instance_id: str, count: int, state: str) -> dict[str, Any]:
    """One request `count` times back to back: CPU ms per request of the process serving it
    (the API, or the worker for its own /metrics) and of PostgreSQL, and the mean latency."""
    assert stack.api is not None
    server = stack.workers[-1].pid if poll.worker else stack.api.pid
    path = poll.path.replace("<id>", instance_id)
    with httpx.Client(base_url=base_url(stack, poll), headers=headers(stack, poll), timeout=60) as client:
        client.get(path).raise_for_status()  # warm: templates, plans, the gauges' cache
        postgres_before = postgres_cpu_seconds(stack.database_url)
        server_before = cpu_seconds(server)
        began = time.perf_counter()
        for _ in range(count):
            client.get(path).raise_for_status()
        elapsed = time.perf_counter() - began
    name = poll.name.replace("(API)", "(API, gauges cached)")
    return {"messages": state, "request": name,
            "API or worker CPU ms/request": 1000 * (cpu_seconds(server) - server_before) / count,
            "PostgreSQL CPU ms/request": 1000 * (postgres_cpu_seconds(stack.database_url) - postgres_before) / count,
            "mean ms": 1000 * elapsed / count}


def gauges_query_cost(url: str, count: int, state: str) -> dict[str, Any]:
    """The /metrics gauges' query alone, which a scrape runs at most once every 5 s per API process."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(queries.METRICS_SNAPSHOT, {"ttl_s": 5.0}).fetchall()
        postgres_before = postgres_cpu_seconds(url)
        began = time.perf_counter()
        for _ in range(count):
            conn.execute(queries.METRICS_SNAPSHOT, {"ttl_s": 5.0}).fetchall()
        elapsed = time.perf_counter() - began
    return {"messages": state, "request": "the /metrics gauges' query (once per 5 s at most)",
            "API or worker CPU ms/request": 0.0,
            "PostgreSQL CPU ms/request": 1000 * (postgres_cpu_seconds(url) - postgres_before) / count,
            "mean ms": 1000 * elapsed / count}


def request_costs(work: Path, instances: int, per_instance: int, count: int) -> list[dict[str, Any]]:
    """Cost per request with the backlog queued (no worker yet), then with it all sent (the
    throughput chart reads the last hour's finished messages). The worker's /metrics is measured
    once the worker is idle after the drain; the rest with no worker running (its idle polls
    would count as PostgreSQL's CPU)."""
    with database(work / f"db-{time.monotonic_ns()}") as url:
        stack, ids = stack_with_backlog(work, url, instances, per_instance)
        try:
            api = [poll for poll in polls(None) if not poll.worker]
            rows = [cost(stack, poll, ids[0], count, "queued") for poll in api]
            rows.append(gauges_query_cost(url, count, "queued"))
            worker = stack.start_worker()
            wait_drained(stack, instances * per_instance)
            rows += [cost(stack, poll, ids[0], count, "sent") for poll in polls(None) if poll.worker]
            stack.stop_process(worker, signal.SIGKILL)
            rows += [cost(stack, poll, ids[0], count, "sent") for poll in api]
            rows.append(gauges_query_cost(url, count, "sent"))
            return rows
        finally:
            stack.stop()


def mean_ms(values: list[float]) -> float:
    return 1000 * statistics.fmean(values) if values else 0.0


def print_drains(title: str, rows: list[dict[str, Any]], runs: dict[str, list[Run]]) -> None:
    print_table(title, rows)

    def ratios(name: str, field: str) -> list[float]:
        return [getattr(run, field) / getattr(base, field) for run, base in zip(runs[name], runs["none"], strict=True)]

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"

    observed = [name for name in runs if name != "none"]
    print_table("Median ratio to \"none\" of the same round (min–max over rounds)", [
        {"variant": name, "messages/s": spread(ratios(name, "rate")),
         "worker CPU ms/msg": spread(ratios(name, "worker_cpu_ms")),
         "PostgreSQL CPU ms/msg": spread(ratios(name, "postgres_cpu_ms")),
         "API CPU s (median)": statistics.median(run.api_cpu_s for run in runs[name])}
        for name in observed])
    print_table("The observers' requests, all rounds", [
        {"variant": name, "request": poll.name, "every": f"{poll.every:g} s",
         "requests": sum(len(run.latencies[poll.name]) for run in runs[name]),
         "mean ms": mean_ms([s for run in runs[name] for s in run.latencies[poll.name]]),
         "max ms": 1000 * max((s for run in runs[name] for s in run.latencies[poll.name]), default=0.0)}
        for name in observed for poll in VARIANTS[name]])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="0: the cost-per-request table alone")
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--per-instance", type=int, default=20)
    parser.add_argument("--cost-requests", type=int, default=50, help="0: no cost-per-request table")
    args = parser.parse_args()
    total = args.instances * args.per_instance
    names = list(VARIANTS)
    runs: dict[str, list[Run]] = {name: [] for name in names}
    rows = []
    with workdir() as work:
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                run = observed_drain(work, args.instances, args.per_instance, VARIANTS[name])
                runs[name].append(run)
                every = [seconds for latencies in run.latencies.values() for seconds in latencies]
                rows.append({"round": round_ + 1, "variant": name, "messages/s": run.rate,
                             "worker CPU ms/msg": run.worker_cpu_ms, "PostgreSQL CPU ms/msg": run.postgres_cpu_ms,
                             "API CPU s": run.api_cpu_s, "observer requests": len(every),
                             "observer mean ms": mean_ms(every), "order": "kept" if run.ordered else "BROKEN"})
        costs = request_costs(work, args.instances, args.per_instance, args.cost_requests) if args.cost_requests else []
    if rows:
        print_drains(f"Dispatch observed: {args.instances} instances × {args.per_instance} messages, 1 worker × 8 "
                     f"threads, {args.rounds} rounds (order rotated)", rows, runs)
    if costs:
        print_table(f"Cost per request, outside a drain: {total} messages on {args.instances} instances, queued, "
                    f"then all sent ({args.cost_requests} requests each, back to back)", costs)


if __name__ == "__main__":
    main()
