"""The broker's ceiling: a Dramatiq worker (8 threads) on dramatiq-postgres draining `total`
no-op messages, inserted beforehand. Prints on its last line: messages/s, then this process's
and PostgreSQL's CPU milliseconds per message."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import dramatiq
import psycopg
from dramatiq_postgres import PostgresBroker
from harness import cpu_seconds, postgres_cpu_seconds
from psycopg_pool import ConnectionPool


def main() -> None:
    url, total = sys.argv[1], int(sys.argv[2])
    with psycopg.connect(url) as conn:
        rows = []
        for _ in range(total):
            message_id = str(uuid.uuid4())
            rows.append((message_id, json.dumps({
                "queue_name": "noop", "actor_name": "noop", "args": [], "kwargs": {}, "options": {},
                "message_id": message_id, "message_timestamp": int(time.time() * 1000)})))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dramatiq.queue (queue_name, message_id, state, message)"
                            " VALUES ('noop', %s, 'queued', %s)", rows)
    pool = ConnectionPool(url, min_size=1, max_size=24, open=True)
    broker = PostgresBroker(pool=pool, results=False, middleware=[], poll_interval=0.1)
    dramatiq.set_broker(broker)
    dramatiq.actor(lambda: None, actor_name="noop", queue_name="noop", broker=broker)
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=100)
    worker.queue_prefetch = 8
    postgres_before = postgres_cpu_seconds(url)
    own_before = cpu_seconds(os.getpid())
    started = time.perf_counter()
    worker.start()
    with psycopg.connect(url) as conn:
        while conn.execute("SELECT count(*) FROM dramatiq.queue").fetchone()[0]:
            time.sleep(0.05)
    elapsed = time.perf_counter() - started
    own_cpu = cpu_seconds(os.getpid()) - own_before
    postgres_cpu = postgres_cpu_seconds(url) - postgres_before
    worker.stop()
    broker.close()
    pool.close()
    print(total / elapsed, 1000 * own_cpu / total, 1000 * postgres_cpu / total)


if __name__ == "__main__":
    main()
