"""One measurement of `broker_choice.py` against one broker, run in that broker's own venv.

    python bench/broker_choice_child.py {order|drain|future} {dramatiq-pg|dramatiq-postgres} URL PARAMS_JSON

dramatiq-pg (0.12, psycopg2, dramatiq 1.x) runs with `bench/.venv-dramatiq-pg/bin/python`, dramatiq-postgres
(1.4, psycopg 3, dramatiq 2.x) with the project's venv; the same code drives both, through their public
broker API. Prints one JSON object on its last stdout line; logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any

import dramatiq
from dramatiq import Message

PG_SCHEMA = "dramatiq_pg"  # dramatiq-pg's default "dramatiq" is taken by dramatiq-postgres in our migrations
DAY_MS = 86_400_000


class Side:
    """What differs between the two packages: driver, schema, broker construction."""

    name: str
    schema: str

    def __init__(self, url: str) -> None:
        self.url = url

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def insert_queued(self, messages: list[Message]) -> None:
        raise NotImplementedError

    def broker(self) -> Any:
        raise NotImplementedError

    def close(self, broker: Any) -> None:
        raise NotImplementedError

    def pending(self, queue_name: str | None = None) -> int:
        """Messages not yet acknowledged (queued, or consumed and not acked)."""
        where = "" if queue_name is None else " AND queue_name = %s"
        params = () if queue_name is None else (queue_name,)
        return int(self.sql(f"SELECT count(*) FROM {self.schema}.queue"
                            f" WHERE state IN ('queued', 'consumed'){where}", params)[0][0])

    def consumed(self) -> int:
        """Messages a worker has taken and not yet acknowledged."""
        return int(self.sql(f"SELECT count(*) FROM {self.schema}.queue WHERE state = 'consumed'")[0][0])


class DramatiqPg(Side):
    name = "dramatiq-pg"
    schema = PG_SCHEMA

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import psycopg2
        from dramatiq_pg.schema import generate_init_sql

        self.conn = psycopg2.connect(url)
        self.conn.autocommit = True
        if not self.sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", (PG_SCHEMA,)):
            # The package's own schema.sql, with its psql variables filled in by the package.
            self.sql(generate_init_sql(schema=PG_SCHEMA, prefix=""))

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def insert_queued(self, messages: list[Message]) -> None:
        from psycopg2.extras import execute_values

        with self.conn.cursor() as cur:
            execute_values(cur, f"INSERT INTO {PG_SCHEMA}.queue (queue_name, message_id, state, message) VALUES %s",
                           [(m.queue_name, m.message_id, "queued", m.encode().decode()) for m in messages])

    def broker(self) -> Any:
        from dramatiq_pg import PostgresBroker

        return PostgresBroker(url=self.url, results=False, schema=PG_SCHEMA, prefix="", middleware=[])

    def close(self, broker: Any) -> None:
        broker.pool.closeall()


class DramatiqPostgres(Side):
    name = "dramatiq-postgres"
    schema = "dramatiq"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def insert_queued(self, messages: list[Message]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany("INSERT INTO dramatiq.queue (queue_name, message_id, state, message)"
                            " VALUES (%s, %s, 'queued', %s)",
                            [(m.queue_name, m.message_id, m.encode().decode()) for m in messages])

    def broker(self) -> Any:
        from dramatiq_postgres import PostgresBroker
        from psycopg_pool import ConnectionPool

        pool = ConnectionPool(self.url, min_size=1, max_size=24, open=True)
        return PostgresBroker(pool=pool, results=False, middleware=[], poll_interval=0.1)

    def close(self, broker: Any) -> None:
        broker.close()
        broker.pool.close()


class ErrorLog(logging.Handler):
    """Keeps the distinct errors the broker and worker log (first line of each)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text} {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        line = " ".join(text.split())[:160]
        if line not in self.errors:
            self.errors.append(line)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def message(queue_name: str, n: int) -> Message:
    return Message(queue_name=queue_name, actor_name="bench", args=(n,), kwargs={}, options={})


def inversions(values: list[int]) -> int:
    """Pairs consumed in the wrong order (merge-sort count)."""
    def sort(xs: list[int]) -> tuple[list[int], int]:
        if len(xs) < 2:
            return xs, 0
        left, a = sort(xs[:len(xs) // 2])
        right, b = sort(xs[len(xs) // 2:])
        merged: list[int] = []
        count, i, j = a + b, 0, 0
        while i < len(left) and j < len(right):
            if left[i] <= right[j]:
                merged.append(left[i])
                i += 1
            else:
                merged.append(right[j])
                count += len(left) - i
                j += 1
        return merged + left[i:] + right[j:], count
    return sort(values)[1]


def consume(broker: Any, queue_name: str, total: int, stall: float, consumer: Any = None) -> list[int]:
    """What one worker thread with prefetch 1 does: take a message, process it, ack it, take the next. Driven
    through the broker's consumer directly, so dramatiq's worker plumbing plays no part in the order."""
    consumer = consumer or broker.consume(queue_name, prefetch=1, timeout=1000)
    got: list[int] = []
    last = time.monotonic()
    try:
        while len(got) < total and time.monotonic() - last < stall:
            proxy = next(consumer)
            if proxy is None:
                continue
            got.append(proxy.args[0])
            consumer.ack(proxy)
            last = time.monotonic()
    finally:
        consumer.close()
    return got


def order(side: Side, params: dict[str, Any]) -> dict[str, Any]:
    total, stall, scenario = params["n"], params["stall"], params["scenario"]
    queue_name = "order"
    broker = side.broker()
    if scenario == "live":
        # The consumer runs (and listens) before the first enqueue.
        consumer = broker.consume(queue_name, prefetch=1, timeout=1000)
        next(consumer)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.extend(consume(broker, queue_name, total, stall, consumer)))
        thread.start()
        for n in range(total):
            broker.enqueue(message(queue_name, n))
        thread.join()
        got = result
    else:
        # The table has history: as many messages went through it before (enqueued, consumed, acked)...
        old = side.broker()
        for _ in range(total):
            old.enqueue(message(queue_name, -1))
        consume(old, queue_name, total, stall)
        side.close(old)
        # ...then a backlog builds up while no worker runs (a deploy, an outage)...
        for n in range(total // 2):
            broker.enqueue(message(queue_name, n))
        if scenario == "backlog-vacuum":
            # ...and (auto)vacuum passes halfway through it, as it does on any busy queue table...
            side.sql(f"VACUUM {side.schema}.queue")
        for n in range(total // 2, total):
            broker.enqueue(message(queue_name, n))
        # ...then one worker thread drains it.
        got = consume(broker, queue_name, total, stall)
    side.close(broker)
    return {"consumed": len(got), "unique": len(set(got)), "in_order": got == list(range(total)),
            "inversions": inversions(got), "first": got[:5]}


def start_worker(side: Side, queue_name: str, seen: dict[int, float], delay_prefetch: int | None = None) -> Any:
    broker = side.broker()
    dramatiq.set_broker(broker)

    def bench(n: int) -> None:
        seen[n] = time.monotonic()

    dramatiq.actor(bench, actor_name="bench", queue_name=queue_name, broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=1000)
    worker.queue_prefetch = 8
    if delay_prefetch is not None:
        worker.delay_prefetch = delay_prefetch
    worker.start()
    return broker, worker


def drain(side: Side, params: dict[str, Any]) -> dict[str, Any]:
    total, stall = params["n"], params["stall"]
    side.insert_queued([message("noop", 0) for _ in range(total)])
    seen: dict[int, float] = {}
    started = time.monotonic()
    broker, worker = start_worker(side, "noop", seen)
    drained, last = 0, started
    while drained < total and time.monotonic() - last < stall:
        time.sleep(0.1)
        now = total - side.pending("noop")
        if now != drained:
            drained, last = now, time.monotonic()
    return {"drained": drained, "seconds": last - started, "stopping": (broker, worker)}


def future(side: Side, params: dict[str, Any]) -> dict[str, Any]:
    total, stall = params["n"], params["stall"]
    seen: dict[int, float] = {}
    rss_start = rss_mb()
    broker, worker = start_worker(side, "bench", seen, params.get("delay_prefetch"))
    actor = broker.get_actor("bench")
    for n in range(total):
        actor.send_with_options(args=(n,), delay=DAY_MS)
    # Let the worker take whatever it takes of them (at most `stall` seconds).
    held, steady, deadline = -1, time.monotonic(), time.monotonic() + stall
    while time.monotonic() - steady < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        now = side.consumed()
        if now != held:
            held, steady = now, time.monotonic()

    def latency(n: int, delay: int | None) -> float | None:
        sent = time.monotonic()
        actor.send_with_options(args=(n,), delay=delay)
        while n not in seen and time.monotonic() - sent < stall:
            time.sleep(0.01)
        return seen[n] - sent if n in seen else None

    plain = latency(-1, None)
    due = latency(-2, 1)
    return {"held": held, "plain": plain, "due": due, "rss_start": rss_start, "rss_end": rss_mb(),
            "stopping": (broker, worker)}


def main() -> None:
    measure, name, url, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    side: Side = DramatiqPg(url) if name == "dramatiq-pg" else DramatiqPostgres(url)
    result = {"order": order, "drain": drain, "future": future}[measure](side, params)
    stopping = result.pop("stopping", None)
    result["errors"] = errors.errors
    print(json.dumps(result), flush=True)
    if stopping is not None:
        # Stop the worker politely, but never hang on it: the numbers are already out.
        broker, worker = stopping
        thread = threading.Thread(target=lambda: (worker.stop(timeout=5000), side.close(broker)), daemon=True)
        thread.start()
        thread.join(10)
    os._exit(0)


if __name__ == "__main__":
    main()
