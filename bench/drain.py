"""Dispatch throughput: how fast queued messages go out, against the broker's own ceiling.

    .venv/bin/python bench/drain.py [--instances 1000] [--per-instance 20] [--hot 2000]

1. Many instances: `instances × per-instance` messages with zero delays, jitter and latency,
   queued before a worker (8 threads) starts; messages/s from worker start to the last send,
   with per-instance order checked.
2. Broker ceiling: the same number of broker messages for a no-op Dramatiq actor on
   dramatiq-postgres alone, 8 threads.
3. The Python peer with per-key order: procrastinate 3.x, a `lock` per instance, one worker
   with concurrency 8, draining the same jobs (bench/procrastinate_peer.py), at its default
   poll (5 s) and at 0.1 s.
4. One hot instance: a backlog of `hot` messages on one instance, at a 100 ms and a 1 s poll
   interval: every hop (complete → dispatch next head → NOTIFY → claim) must skip the poll, so
   the rate must not depend on it. procrastinate beside it: a finished job wakes nobody, so each
   job of one lock waits for the next poll; its backlog is cut to 10 jobs at the 5 s poll and 200
   at 0.1 s (a rate is a rate; 2000 jobs would take hours).

CPU per message (worker process and PostgreSQL server, from /proc) is the figure this noisy
2-core machine moves least.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
from harness import (
    ROOT,
    Stack,
    cpu_seconds,
    create_instances,
    database,
    postgres_cpu_seconds,
    print_table,
    wait_until,
    workdir,
)

ENQUEUE_MANY = """
    SELECT wmq_enqueue(md5(random()::text || clock_timestamp()::text), %(instance)s, 'text', '5511999999999',
                       '{"message": "bench"}', 0, 0, 0, NULL, 3, 'whatsapp', 'deliver')
      FROM generate_series(1, %(count)s)
"""


def queue_backlog(stack: Stack, instances: int, per_instance: int, transport: str = "simulator") -> list[str]:
    """Create instances and queue their messages straight through the SQL core (no worker yet)."""
    ids = [instance["id"] for instance in create_instances(stack, instances, transport)]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for instance_id in ids:
            conn.execute(ENQUEUE_MANY, {"instance": instance_id, "count": per_instance})
    return ids


class Drained(NamedTuple):
    rate: float  # messages/s
    worker_cpu_ms: float  # per message
    postgres_cpu_ms: float  # per message


def drain(stack: Stack, total: int, timeout: float, instance: str | None = None) -> Drained:
    """Start a worker and wait for `total` messages (of `instance`, if given) to complete;
    messages/s from the first claim to the last send (the worker's start-up excluded), and CPU
    per message of the worker process and of PostgreSQL."""
    where = "status = 'completed'" + (" AND instance_id = %(instance)s" if instance else "")
    params = {"instance": instance}
    postgres_before = postgres_cpu_seconds(stack.database_url)
    worker = stack.start_worker()
    worker_before = cpu_seconds(worker.pid)
    wait_until(lambda: stack.one(f"SELECT count(*) AS n FROM messages WHERE {where}", params)["n"] == total,
               timeout, f"{total} messages to complete", interval=0.5)
    worker_cpu = cpu_seconds(worker.pid) - worker_before
    postgres_cpu = postgres_cpu_seconds(stack.database_url) - postgres_before
    span = stack.one(f"SELECT min(started_at) AS first, max(sent_at) AS last FROM messages WHERE {where}", params)
    return Drained(total / (span["last"] - span["first"]).total_seconds(), 1000 * worker_cpu / total,
                   1000 * postgres_cpu / total)


def check_order(stack: Stack, instance_ids: list[str]) -> bool:
    rows = stack.all("""
        SELECT e.instance_id, array_agg(m.sequence ORDER BY e.id) AS sent
          FROM simulator_events e JOIN messages m ON m.zaap_id = e.zaap_id
         WHERE e.kind = 'send' GROUP BY e.instance_id""")
    return len(rows) == len(instance_ids) and all(r["sent"] == sorted(r["sent"]) for r in rows)


def ours(work: Path, instances: int, per_instance: int, env: dict[str, Any],
         transport: str = "simulator") -> tuple[Drained, bool]:
    with database(work / f"db-{time.monotonic_ns()}") as url:
        stack = Stack(url, work / f"stack-{time.monotonic_ns()}", {"MESSAGE_QUEUE_WORKER_THREADS": 8,
                                                                    "LOG_LEVEL": "WARNING", **env})
        stack.start_api()
        try:
            ids = queue_backlog(stack, instances, per_instance, transport)
            drained = drain(stack, instances * per_instance, timeout=3600)
            return drained, check_order(stack, ids)
        finally:
            stack.stop()


def run_script(work: Path, script: str, args: list[str]) -> list[str]:
    """Run `bench/<script> <fresh database url> <args>`; the fields of its last line."""
    with database(work / f"db-{time.monotonic_ns()}") as url:
        result = subprocess.run([sys.executable, str(ROOT / "bench" / script), url, *args],
                                capture_output=True, text=True, timeout=7200)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return result.stdout.strip().splitlines()[-1].split()


def broker_ceiling(work: Path, total: int) -> Drained:
    return Drained(*map(float, run_script(work, "noop_worker.py", [str(total)])))


def procrastinate(work: Path, args: list[str]) -> tuple[Drained, bool]:
    rate, ordered, own_cpu_ms, postgres_cpu_ms = run_script(work, "procrastinate_peer.py", args)
    return Drained(float(rate), float(own_cpu_ms), float(postgres_cpu_ms)), ordered == "1"


def row(system: str, drained: Drained, order: str, ceiling: Drained) -> dict[str, Any]:
    cpu = drained.worker_cpu_ms + drained.postgres_cpu_ms
    ceiling_cpu = ceiling.worker_cpu_ms + ceiling.postgres_cpu_ms
    return {
        "system": system, "messages/s": drained.rate, "per-instance order": order,
        "vs ceiling": f"{drained.rate / ceiling.rate:.0%}", "worker CPU ms/msg": drained.worker_cpu_ms,
        "PostgreSQL CPU ms/msg": drained.postgres_cpu_ms,
        # A run of a few messages (the suite's smoke run) can use less CPU than the clock resolves.
        "CPU vs ceiling": f"{cpu / ceiling_cpu:.1f}×" if ceiling_cpu else "—",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--per-instance", type=int, default=20)
    parser.add_argument("--hot", type=int, default=2000)
    args = parser.parse_args()
    total = args.instances * args.per_instance
    many = [str(args.instances), str(args.per_instance)]
    with workdir() as work:
        drained, ordered = ours(work, args.instances, args.per_instance, {})
        ceiling = broker_ceiling(work, total)
        peer_default, peer_default_ordered = procrastinate(work, ["many", *many])
        peer_fast, peer_fast_ordered = procrastinate(work, ["many", *many, "--poll", "0.1"])
        print_table(f"Dispatch: {args.instances} instances × {args.per_instance} messages, 1 worker × 8 threads", [
            row("wmq: claim, send on the simulator, complete, dispatch the next head", drained,
                "kept" if ordered else "BROKEN", ceiling),
            row("dramatiq-postgres no-op actor (broker ceiling)", ceiling, "n/a", ceiling),
            row("procrastinate, lock per instance, concurrency 8, default 5 s poll", peer_default,
                "kept" if peer_default_ordered else "BROKEN", ceiling),
            row("procrastinate, the same, 0.1 s poll", peer_fast, "kept" if peer_fast_ordered else "BROKEN", ceiling),
        ])
        hot = []
        for poll in ("100ms", "1s"):
            drained, ordered = ours(work, 1, args.hot, {"MESSAGE_QUEUE_POLL_INTERVAL": poll})
            hot.append({"system": "wmq", "poll interval": poll, "backlog": args.hot, "messages/s": drained.rate,
                        "order": "kept" if ordered else "BROKEN", "worker CPU ms/msg": drained.worker_cpu_ms,
                        "PostgreSQL CPU ms/msg": drained.postgres_cpu_ms})
        for poll, backlog in (("5s", min(args.hot, 10)), ("100ms", min(args.hot, 200))):
            extra = [] if poll == "5s" else ["--poll", "0.1"]
            drained, ordered = procrastinate(work, ["hot", str(backlog), *extra])
            hot.append({"system": "procrastinate, one lock", "poll interval": poll, "backlog": backlog,
                        "messages/s": drained.rate, "order": "kept" if ordered else "BROKEN",
                        "worker CPU ms/msg": drained.worker_cpu_ms, "PostgreSQL CPU ms/msg": drained.postgres_cpu_ms})
        print_table("One hot instance", hot)


if __name__ == "__main__":
    main()
