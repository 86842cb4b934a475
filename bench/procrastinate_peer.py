"""The Python peer with per-key ordering: procrastinate 3.x, one `lock` per instance, one worker
with concurrency 8 (async task) on a fresh database. Prints `<messages/s> <order kept: 1|0>
<worker CPU ms/msg> <PostgreSQL CPU ms/msg>` on its last line; diagnostics go to stderr.

    python bench/procrastinate_peer.py <database_url> many <instances> <per_instance> [--poll SECONDS]
    python bench/procrastinate_peer.py <database_url> hot <backlog> [--poll SECONDS]

procrastinate's schema is applied to the database first (all its objects are named
`procrastinate_*` / `idx_procrastinate_*`; it refuses to run if any such object already exists).
Then every job is deferred instance by instance (`batch_defer_async`, one batch per instance,
`lock=f"instance-{i}"`, no queueing lock), as drain.py queues its messages, before the worker
starts. Each job inserts its (instance, n) into `peer_sends`, a real write like the simulator
recording a send. The rate runs from the first job's start (procrastinate's `started` event) to
the last insert; order is kept when every instance's n's rise in insertion order.

Without --poll the worker keeps procrastinate's default `fetch_job_polling_interval` (5 s in
3.x). The worker only re-fetches after a fetch found nothing when a job is *inserted* (NOTIFY)
or the poll interval elapses: finishing a job wakes nothing, so a lock's next job waits for the
next poll. That is the hot instance's rate, and the tail of the many-instance drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import sys
import time
from typing import Any

import procrastinate
import psycopg
from harness import cpu_seconds, postgres_cpu_seconds
from procrastinate import worker as procrastinate_worker
from procrastinate.tasks import Task

CONCURRENCY = 8
POOL_SIZE = CONCURRENCY + 4  # the tasks' inserts, plus the listener, fetches and status updates


async def send(context: procrastinate.JobContext, instance: int, n: int) -> None:
    """The job: record (instance, n), like the simulator recording a send."""
    await context.app.connector.execute_query_async(
        "INSERT INTO peer_sends (instance, n) VALUES (%(instance)s, %(n)s)", instance=instance, n=n)


def make_app(url: str) -> tuple[procrastinate.App, Task[Any, Any, Any]]:
    # Deferral and worker share this process and the task is named explicitly, so the warning about an
    # app built in __main__ (whose tasks another process could not import) does not apply.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=url, min_size=POOL_SIZE, max_size=POOL_SIZE))
    return app, app.task(name="send", pass_context=True)(send)


def parse_args() -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--poll", type=float, default=None,
                        help="fetch_job_polling_interval in seconds (default: procrastinate's own)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    modes = parser.add_subparsers(dest="mode", required=True)
    many = modes.add_parser("many", parents=[common])
    many.add_argument("instances", type=int)
    many.add_argument("per_instance", type=int)
    hot = modes.add_parser("hot", parents=[common])
    hot.add_argument("backlog", type=int)
    args = parser.parse_args()
    if args.mode == "hot":
        args.instances, args.per_instance = 1, args.backlog
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def prepare(app: procrastinate.App, url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        schema = (await (await conn.execute("SELECT current_schema()")).fetchone())[0]
        clashes = await (await conn.execute("""
            SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname LIKE '%procrastinate%' OR c.relname = 'peer_sends'
            UNION ALL
            SELECT n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.proname LIKE '%procrastinate%'
            UNION ALL
            SELECT n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE t.typname LIKE '%procrastinate%'""")).fetchall()
        if clashes:
            raise SystemExit(f"procrastinate objects already in the database: {[c[0] for c in clashes]}")
    await app.schema_manager.apply_schema_async()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE peer_sends (id bigserial PRIMARY KEY, instance int NOT NULL, n int NOT NULL,"
                           " sent_at timestamptz NOT NULL DEFAULT clock_timestamp())")
    log(f"procrastinate schema applied to schema {schema!r}")


async def defer(task: Task[Any, Any, Any], instances: int, per_instance: int) -> None:
    for i in range(instances):
        await task.configure(lock=f"instance-{i}").batch_defer_async(
            *({"instance": i, "n": n} for n in range(per_instance)))


async def drain(app: procrastinate.App, url: str, total: int, poll: float | None) -> float:
    """Run the worker until `total` sends are recorded (or a job fails); returns the wall time."""
    options: dict[str, Any] = {"concurrency": CONCURRENCY, "install_signal_handlers": False}
    if poll is not None:
        options["fetch_job_polling_interval"] = poll
    started = time.perf_counter()
    worker = asyncio.create_task(app.run_worker_async(**options))
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while True:
                done, failed = await (await conn.execute(
                    "SELECT (SELECT count(*) FROM peer_sends),"
                    " EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status = 'failed')")).fetchone()
                if failed:
                    raise RuntimeError("a procrastinate job failed")
                if done >= total:
                    break
                if worker.done():
                    raise RuntimeError(f"the worker stopped with {done} of {total} jobs done: {worker!r}")
                await asyncio.sleep(0.2)
        return time.perf_counter() - started
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


async def measure(url: str, instances: int, per_instance: int) -> tuple[float, bool]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        first, last, count = await (await conn.execute("""
            SELECT (SELECT min(at) FROM procrastinate_events WHERE type = 'started'),
                   max(sent_at), count(*) FROM peer_sends""")).fetchone()
        rows = await (await conn.execute(
            "SELECT instance, array_agg(n ORDER BY id) FROM peer_sends GROUP BY instance")).fetchall()
        stalls = await (await conn.execute("""
            SELECT count(*), coalesce(sum(gap), 0) FROM (
                SELECT extract(epoch FROM sent_at - lag(sent_at) OVER (ORDER BY sent_at)) AS gap FROM peer_sends) g
             WHERE gap > 1""")).fetchone()
        p99 = (await (await conn.execute(
            "SELECT sent_at FROM peer_sends ORDER BY sent_at OFFSET %s LIMIT 1",
            [max(0, int(count * 0.99) - 1)])).fetchone())[0]
    span = (last - first).total_seconds()
    expected = list(range(per_instance))
    ordered = len(rows) == instances and all(sent == expected for _, sent in rows)
    log(f"span {span:.3f} s (first start → last send), 99% done after {(p99 - first).total_seconds():.3f} s;"
        f" {stalls[0]} gaps > 1 s between consecutive sends, {float(stalls[1]):.1f} s in total")
    return count / span, ordered


async def run(args: argparse.Namespace) -> tuple[float, bool, float, float]:
    app, task = make_app(args.url)
    total = args.instances * args.per_instance
    poll = args.poll if args.poll is not None else procrastinate_worker.FETCH_JOB_POLLING_INTERVAL
    log(f"procrastinate {importlib.metadata.version('procrastinate')}: {args.instances} × {args.per_instance} jobs,"
        f" concurrency {CONCURRENCY}, fetch_job_polling_interval {poll} s"
        f" ({'set' if args.poll is not None else 'default'}), listen_notify on")
    async with app.open_async():
        await prepare(app, args.url)
        started = time.perf_counter()
        await defer(task, args.instances, args.per_instance)
        log(f"deferred {total} jobs in {time.perf_counter() - started:.2f} s")
        own, postgres = cpu_seconds(os.getpid()), postgres_cpu_seconds(args.url)
        wall = await drain(app, args.url, total, args.poll)
        own, postgres = cpu_seconds(os.getpid()) - own, postgres_cpu_seconds(args.url) - postgres
        log(f"worker wall time {wall:.2f} s")
    rate, ordered = await measure(args.url, args.instances, args.per_instance)
    return rate, ordered, 1000 * own / total, 1000 * postgres / total


def main() -> None:
    rate, ordered, own_cpu_ms, postgres_cpu_ms = asyncio.run(run(parse_args()))
    print(f"{rate} {int(ordered)} {own_cpu_ms} {postgres_cpu_ms}")


if __name__ == "__main__":
    main()
