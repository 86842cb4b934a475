"""Paced load against worker threads (issue 15): how many threads a worker needs when every
WhatsApp call waits on the network.

    .venv/bin/python bench/paced.py [--instances 1000 300] [--interval 2] [--per-instance 20]
                                    [--latency-ms 300] [--workers 1 2 3] [--threads 8 32 64 128]
                                    [--warmup 5] [--grace 5] [--no-prune] [--set NAME=VALUE]
                                    [--claim-rows-1] [--transport simulator-session]

A load is `instances` instances of `--transport` (by default the session-bound simulator: each
instance is leased to one worker, whose own queue carries its heads, as a WhatsApp session's
are; `simulator` for instances any worker serves), each offered one message every `interval` seconds
(`instances / interval` msg/s in all), for `per-instance` messages; every load of
`--instances × --interval` is run over every `--workers × --threads` (MESSAGE_QUEUE_WORKER_THREADS).
The simulator sleeps `latency-ms` in each send (no database connection held meanwhile), as a
WhatsApp call waits on the network: one thread then sends at most 1000 / latency-ms msg/s, so
`workers × threads / latency` is the ceiling the threads set.

How the load is offered: no driver runs during the measurement. Each instance's whole series is
queued up front through the SQL function the API uses (`wmq_enqueue`, as bench/drain.py), with
an explicit due time (`scheduledFor`): message k of instance i is due at
T0 + (i / instances + k) × interval, so the instances' phases are spread evenly over one interval
and the offered load is uniform. `delayMessage` chaining was not used: a head is dispatched at
the previous *send* + delay (`wmq_paced_at`), so each message of a series would come
latency + dispatch time later than the last and the offered rate would fall below one per
`interval` with every message, whatever the threads. Everything is queued and the workers are
started before T0 (the lead is sized to the backlog); nothing is due until then.

Per configuration, on a fresh database (embedded PostgreSQL, max_connections 100), with jitter 0
and the production poll, heartbeat, maintenance and job timeout (not the test stack's):
- offered and sent msg/s over the steady window [T0 + warmup, T0 + per-instance × interval]
  (sent: sends completed in the window, `messages.sent_at`);
- lateness (send start − due time, `messages.started_at − scheduled_at`) p50 / p99 / max of the
  messages due in the window; a message not yet started when the run ends (`grace` s after the
  last due time) counts as late by at least the time it has waited: such figures are marked ≥;
- CPU of the worker processes and of the whole PostgreSQL server over the window, in cores
  (CPU seconds / wall seconds; the machine has 2);
- peak connections (`SELECT count(*) FROM pg_stat_activity`, sampled every 0.2 s; it includes
  PostgreSQL's own background processes, the idle API's pool and the sampler), and those of the
  worker pools (`application_name = 'wmq-worker'`);
- worker RSS (mean over the worker processes, at the end of the window) and the warnings the
  workers logged (a refused connection, a pool timeout, …).
A configuration meets the load when it sends ≥ 95 % of it with lateness p99 under 1 s.

Pruning (unless --no-prune), to keep the run short: a configuration is skipped once the same
load was met with no more workers and no more threads, and with more than one worker when its
thread ceiling is under a quarter of the load (the one-worker row shows that bound). Skipped
rows are printed as skipped, with the reason.

--claim-rows-1 is a what-if, not the code: on the bench's database only, `ALTER FUNCTION
wmq_claim(text, uuid, uuid) ROWS 1`, so that the worker's claim (service/core/queries.py
CLAIM, which joins the function's result to `messages`) is planned as an index lookup rather
than a hash join over a sequential scan of every message (PostgreSQL assumes 1,000 rows from a
set-returning function). It shows what the threads alone allow once that cost is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import psycopg
from harness import (
    Stack,
    cpu_seconds,
    create_instances,
    database,
    percentile,
    print_table,
    wait_until,
    workdir,
)

#: The service's production timings, where the test stack (tests/stack.py TEST_ENV) shortens
#: them; jitter stays 0 (TEST_ENV), so WHATSAPP_MIN_SEND_INTERVAL is 0 as well.
PRODUCTION_TIMINGS = {
    "MESSAGE_QUEUE_POLL_INTERVAL": "100ms",
    "MESSAGE_QUEUE_HEARTBEAT_INTERVAL": "15s",
    "MESSAGE_QUEUE_HEARTBEAT_TTL": "60s",
    "MESSAGE_QUEUE_MAINTENANCE_INTERVAL": "30s",
    "MESSAGE_QUEUE_LEASE_INTERVAL": "2s",
    "MESSAGE_QUEUE_JOB_TIMEOUT": "30s",
    "LOG_LEVEL": "WARNING",
}

SET_LATENCY = """
    INSERT INTO simulator_instances (instance_id, connected, fail_next, fail_mode, latency_ms)
    SELECT id, true, 0, 'retryable', %(latency_ms)s FROM instances
    ON CONFLICT (instance_id) DO UPDATE SET latency_ms = EXCLUDED.latency_ms
"""

#: One instance's series, due at `first`, `first + interval`, … (`scheduledFor`, no delay).
ENQUEUE_SERIES = """
    SELECT count(*) AS n
      FROM generate_series(0, %(count)s - 1) AS k,
           LATERAL wmq_enqueue(md5(random()::text || clock_timestamp()::text), %(instance)s, 'text',
                               '5511999999999', '{"message": "paced"}', 0, 0, 0,
                               %(first)s + k * make_interval(secs => %(interval)s), 3, 'whatsapp', 'deliver')
"""

NOT_STARTED = "SELECT count(*) FROM messages WHERE started_at IS NULL AND scheduled_at < %s"

#: What-if (--claim-rows-1), on the bench's database only: the planner told that wmq_claim returns
#: one row, so the claim's join to `messages` is an index lookup instead of a hash join over a
#: sequential scan of the whole table (its default estimate for a set-returning function is 1,000).
CLAIM_ROWS_1 = "ALTER FUNCTION wmq_claim(text, uuid, uuid) ROWS 1"

#: The session leases each worker owns (free ones are in no count).
PER_WORKER = "SELECT count(*) FROM session_leases WHERE worker_id IS NOT NULL GROUP BY worker_id ORDER BY 1 DESC"

CONNECTIONS = """
    SELECT count(*) AS total, count(*) FILTER (WHERE application_name = 'wmq-worker') AS workers
      FROM pg_stat_activity
"""

WINDOW = """
    SELECT count(*) FILTER (WHERE scheduled_at >= %(start)s AND scheduled_at < %(end)s) AS offered,
           count(*) FILTER (WHERE sent_at >= %(start)s AND sent_at < %(end)s) AS sent
      FROM messages
"""

LATENESS = """
    SELECT EXTRACT(EPOCH FROM COALESCE(started_at, %(now)s) - scheduled_at) AS late_s, started_at IS NULL AS waiting
      FROM messages WHERE scheduled_at >= %(start)s AND scheduled_at < %(end)s
"""

#: Messages whose due time is not the one asked for (the chain must not move a scheduledFor).
MOVED = """
    SELECT count(*) AS n FROM messages m JOIN (
        SELECT instance_id, min(sequence) AS sequence, min(scheduled_at) AS first FROM messages GROUP BY instance_id
    ) f USING (instance_id)
     WHERE abs(EXTRACT(EPOCH FROM m.scheduled_at - f.first) - (m.sequence - f.sequence) * %(interval)s) > 0.001
"""


class Load(NamedTuple):
    instances: int
    interval: float  # seconds between two messages of one instance
    per_instance: int

    @property
    def offered(self) -> float:
        return self.instances / self.interval


class Result(NamedTuple):
    offered: float  # msg/s due in the window
    sent: float  # msg/s completed in the window
    late: list[float]  # seconds, of the messages due in the window
    waiting: int  # of those, not started when the run ended (their lateness is a lower bound)
    worker_cpu: float  # cores
    postgres_cpu: float  # cores
    peak_connections: int
    peak_worker_connections: int
    rss_mib: float  # mean over the workers
    warnings: int  # lines the workers logged at WARNING or above
    first_warning: str

    def meets(self) -> bool:
        return self.sent >= 0.95 * self.offered and percentile(self.late, 99) < 1.0


class Sampler(threading.Thread):
    """Peak connections, from a connection of its own, every 0.2 s until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)  # now, while a connection is to be had
        self.stop_event = threading.Event()
        self.peak_total = 0
        self.peak_workers = 0

    def run(self) -> None:
        with self.conn:
            while not self.stop_event.wait(0.2):
                total, workers = self.conn.execute(CONNECTIONS).fetchone()  # type: ignore[misc]
                self.peak_total = max(self.peak_total, total)
                self.peak_workers = max(self.peak_workers, workers)

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join()
        self.conn.close()


class Postmaster:
    """harness.postgres_cpu_seconds without a connection per reading (a worker pool may have
    taken every one by then): the postmaster, its live children and the reaped ones."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        data_dir = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]  # type: ignore[index]
        self.process = psutil.Process(int((Path(data_dir) / "postmaster.pid").read_text().split()[0]))

    def cpu_seconds(self) -> float:
        times = self.process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.process.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total


def live_cpu_seconds(pid: int) -> float:
    """A worker's CPU seconds so far; 0 once it has died (its warnings say why)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return cpu_seconds(pid)
    return 0.0


def live_rss_mib(pid: int) -> float:
    with contextlib.suppress(psutil.NoSuchProcess):
        return float(psutil.Process(pid).memory_info().rss) / 2**20
    return 0.0


def enqueue_series(stack: Stack, ids: list[str], load: Load, t0: datetime) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for n, instance_id in enumerate(ids):
            first = t0 + timedelta(seconds=load.interval * n / len(ids))
            conn.execute(ENQUEUE_SERIES, {"instance": instance_id, "count": load.per_instance, "first": first,
                                          "interval": load.interval})


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def worker_warnings(stack: Stack) -> tuple[int, str]:
    """Lines the workers logged at WARNING or above (JSON lines, or plain ones before logging is
    set up), and the first of them."""
    pattern = re.compile(r'"level": "(warning|error|critical)"|^(WARNING|ERROR|CRITICAL)|Traceback', re.IGNORECASE)
    lines = [line for worker in stack.workers for line in stack.log_files[worker.pid].read_text().splitlines()
             if pattern.search(line)]
    return len(lines), (lines[0][:300] if lines else "")


def run(work: Path, load: Load, latency_ms: int, workers: int, threads: int, warmup: float,
        grace: float, settings: dict[str, str], claim_rows_1: bool, transport: str) -> Result:
    env = {**PRODUCTION_TIMINGS, "MESSAGE_QUEUE_WORKER_THREADS": threads, **settings}
    with database(work / f"db-{time.monotonic_ns()}") as url:
        stack = Stack(url, work / f"stack-{time.monotonic_ns()}", env)
        stack.start_api()
        try:
            ids = [instance["id"] for instance in create_instances(stack, load.instances, transport)]
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(SET_LATENCY, {"latency_ms": latency_ms})
                if claim_rows_1:
                    conn.execute(CLAIM_ROWS_1)
            # The lead: the backlog at ~3,000 enqueues/s on this machine, ~2 s per worker start, and
            # for session instances the lease rounds that spread them over the workers.
            lead = 4 + load.instances * load.per_instance / 3000 + 2 * workers + (8 if transport != "simulator" else 0)
            t0 = datetime.now(UTC) + timedelta(seconds=lead)
            enqueue_series(stack, ids, load, t0)
            moved = stack.one(MOVED, {"interval": load.interval})["n"]
            if moved:
                raise RuntimeError(f"{moved} messages are not due when asked")
            # Connections of our own, taken before the workers' pools can fill max_connections.
            sampler = Sampler(url)
            with psycopg.connect(url, autocommit=True) as probe:
                postmaster = Postmaster(probe)
                for _ in range(workers):
                    stack.start_worker()
                if transport != "simulator":  # every lease owned, in fair shares (the slack of one)
                    share = -(-load.instances // workers)

                    def per_worker() -> list[int]:
                        return [r[0] for r in probe.execute(PER_WORKER)]

                    def spread(counts: list[int]) -> bool:
                        return sum(counts) == load.instances and len(counts) == workers and counts[0] <= share + 1

                    with contextlib.suppress(AssertionError):
                        wait_until(lambda: spread(per_worker()), max(1.0, (t0 - datetime.now(UTC)).total_seconds()),
                                   "the shares", interval=0.2)
                    print(f"leases per worker: {per_worker()}", file=sys.stderr)
                slack = (t0 - datetime.now(UTC)).total_seconds()
                print(f"queued and {workers} worker(s) started {slack:.1f} s before T0"
                      + ("" if slack > 0 else ": LATE, raise the lead"), file=sys.stderr, flush=True)
                pids = [worker.pid for worker in stack.workers]
                sampler.start()
                try:
                    start = t0 + timedelta(seconds=warmup)
                    end = t0 + timedelta(seconds=load.per_instance * load.interval)
                    sleep_until(start)
                    worker_before = sum(live_cpu_seconds(pid) for pid in pids)
                    postgres_before = postmaster.cpu_seconds()
                    began = time.monotonic()
                    sleep_until(end)
                    wall = time.monotonic() - began
                    worker_cpu = (sum(live_cpu_seconds(pid) for pid in pids) - worker_before) / wall
                    postgres_cpu = (postmaster.cpu_seconds() - postgres_before) / wall
                    rss = [live_rss_mib(pid) for pid in pids]
                    with contextlib.suppress(AssertionError):
                        wait_until(lambda: probe.execute(NOT_STARTED, (end,)).fetchone()[0] == 0,  # type: ignore[index]
                                   grace, "the window's messages to start", interval=0.2)
                    now = datetime.now(UTC)
                finally:
                    sampler.stop()
            for worker in stack.workers:  # nothing left to measure; the database goes
                stack.stop_process(worker, signal.SIGKILL)
            params = {"start": start, "end": end, "now": now}
            counts = stack.one(WINDOW, params)
            rows = stack.all(LATENESS, params)
            warnings, first_warning = worker_warnings(stack)
            seconds = (end - start).total_seconds()
            return Result(counts["offered"] / seconds, counts["sent"] / seconds,
                          [float(r["late_s"]) for r in rows], sum(1 for r in rows if r["waiting"]),
                          worker_cpu, postgres_cpu, sampler.peak_total, sampler.peak_workers,
                          sum(rss) / len(rss), warnings, first_warning)
        finally:
            stack.stop()


def seconds(value: float, bound: bool) -> str:
    text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return f"≥ {text}" if bound else text


def row(load: Load, workers: int, threads: int, latency_ms: int, result: Result | None,
        skipped: str = "") -> dict[str, Any]:
    ceiling = workers * threads * 1000 / latency_ms
    base = {"load": f"{load.instances} × 1/{load.interval:g} s", "workers × threads": f"{workers} × {threads}",
            "thread ceiling msg/s": ceiling, "offered msg/s": load.offered}
    if result is None:
        return {**base, "sent msg/s": "—", "late p50 s": "—", "late p99 s": "—", "late max s": "—",
                "not started": "—", "worker CPU (cores)": "—", "PostgreSQL CPU (cores)": "—",
                "peak conns (all / worker pools)": "—", "worker RSS MiB": "—", "worker warnings": "—",
                "meets": f"skipped: {skipped}"}
    bound = result.waiting > 0  # the highest lateness figures include messages still waiting
    return {**base, "offered msg/s": result.offered, "sent msg/s": result.sent,
            "late p50 s": seconds(percentile(result.late, 50), bound and percentile(result.late, 50) > 0),
            "late p99 s": seconds(percentile(result.late, 99), bound),
            "late max s": seconds(max(result.late), bound), "not started": result.waiting,
            "worker CPU (cores)": result.worker_cpu, "PostgreSQL CPU (cores)": result.postgres_cpu,
            "peak conns (all / worker pools)": f"{result.peak_connections} / {result.peak_worker_connections}",
            "worker RSS MiB": result.rss_mib, "worker warnings": result.warnings,
            "meets": "yes" if result.meets() else "no"}


def skip_reason(load: Load, workers: int, threads: int, latency_ms: int, met: set[tuple[int, int]]) -> str:
    if any(w <= workers and t <= threads for w, t in met):
        return "met with as few workers and threads"
    if workers > 1 and workers * threads * 1000 / latency_ms < load.offered / 4:
        return "thread ceiling under a quarter of the load"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, nargs="+", default=[1000, 300])
    parser.add_argument("--interval", type=float, nargs="+", default=[2.0], help="seconds, per instance")
    parser.add_argument("--per-instance", type=int, default=20)
    parser.add_argument("--latency-ms", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 32, 64, 128])
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after T0 left out")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to wait for late sends after the last due")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the API and workers beside the defaults (diagnostics), repeatable")
    parser.add_argument("--no-prune", action="store_true")
    parser.add_argument("--transport", default="simulator-session", choices=["simulator-session", "simulator"])
    parser.add_argument("--claim-rows-1", action="store_true",
                        help="what-if: ALTER FUNCTION wmq_claim ... ROWS 1 on the bench's database (not the code)")
    args = parser.parse_args()
    loads = [Load(n, interval, args.per_instance) for n in args.instances for interval in args.interval]
    settings = dict(item.split("=", 1) for item in args.set)
    with workdir() as work:
        for load in loads:
            rows = []
            met: set[tuple[int, int]] = set()
            for workers in sorted(args.workers):
                for threads in sorted(args.threads):
                    reason = "" if args.no_prune else skip_reason(load, workers, threads, args.latency_ms, met)
                    if reason:
                        rows.append(row(load, workers, threads, args.latency_ms, None, reason))
                        continue
                    began = time.monotonic()
                    result = run(work, load, args.latency_ms, workers, threads, args.warmup, args.grace, settings,
                                 args.claim_rows_1, args.transport)
                    if result.meets():
                        met.add((workers, threads))
                    rows.append(row(load, workers, threads, args.latency_ms, result))
                    print(f"{load} {workers}×{threads}: {time.monotonic() - began:.0f} s; {rows[-1]}"
                          + (f"; first warning: {result.first_warning}" if result.warnings else ""),
                          file=sys.stderr, flush=True)
            extra = f", {args.transport} instances" + "".join(f", {name}={value}" for name, value in settings.items())
            extra += ", what-if: wmq_claim ROWS 1" if args.claim_rows_1 else ""
            print_table(f"Paced load: {load.instances} instances × one message every {load.interval:g} s "
                        f"({load.offered:g} msg/s offered) for {load.per_instance} messages each, "
                        f"{args.latency_ms} ms per send{extra}", rows)


if __name__ == "__main__":
    main()
