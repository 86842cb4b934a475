"""Idle cost: many instances, each with one message due in a day, and one worker waiting.

    .venv/bin/python bench/idle.py [--instances 10000] [--idle 30]

Reports, beside an empty database in the same run: the worker's memory (RSS) and CPU while
nothing is due, the database's size, and the time to send one message that falls due among
the waiting ones (enqueue → simulator send, median of 5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from harness import Stack, database, print_table, workdir

CREATE_WAITING = """
    WITH created AS (
        INSERT INTO instances (id, token, name)
        SELECT gen_random_uuid(), md5(random()::text), 'idle-' || n FROM generate_series(1, %(n)s) n
        RETURNING id
    ), queues AS (
        INSERT INTO instance_queues (instance_id) SELECT id FROM created RETURNING instance_id
    )
    SELECT count(*) AS n FROM queues
"""
ENQUEUE_TOMORROW = """
    SELECT count(*) AS n FROM instances i, LATERAL wmq_enqueue(
        md5(random()::text || i.id::text), i.id, 'text', '5511999999999', '{"message": "tomorrow"}',
        86400000, 0, 0, NULL, 3, 'whatsapp', 'deliver') e
"""


def proc_stat(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds used so far) of a process."""
    rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks


def measure(work: Path, instances: int, idle: float) -> dict[str, Any]:
    with database(work / f"db-{instances}") as url:
        stack = Stack(url, work / f"stack-{instances}", {"LOG_LEVEL": "WARNING", "MESSAGE_QUEUE_WORKER_THREADS": 8})
        try:
            if instances:
                stack.all(CREATE_WAITING, {"n": instances})
                stack.all(ENQUEUE_TOMORROW)
            stack.start_api()
            worker = stack.start_worker()
            time.sleep(5)  # settle: imports, first polls
            _, cpu_before = proc_stat(worker.pid)
            started = time.monotonic()
            time.sleep(idle)
            rss, cpu_after = proc_stat(worker.pid)
            cpu_share = (cpu_after - cpu_before) / (time.monotonic() - started)
            size = stack.one("SELECT pg_database_size(current_database()) / 1048576.0 AS mib")["mib"]
            latencies = []
            probe = stack.create_instance()
            for n in range(5):
                zaap_id = stack.send_text(probe, f"due now {n}")["zaapId"]
                stack.wait_completed([zaap_id], timeout=30)
                row = stack.one("SELECT EXTRACT(EPOCH FROM e.started_at - m.enqueued_at) * 1000 AS ms"
                                " FROM messages m JOIN simulator_events e ON e.zaap_id = m.zaap_id"
                                " WHERE m.zaap_id = %s", (zaap_id,))
                latencies.append(float(row["ms"]))
            waiting = stack.one("SELECT count(*) AS n FROM dramatiq.queue WHERE state = 'queued'")["n"]
            consumed = stack.one("SELECT count(*) AS n FROM dramatiq.queue WHERE state = 'consumed'")["n"]
        finally:
            stack.stop()
    return {"waiting instances": instances, "broker rows queued": waiting, "consumed": consumed,
            "worker RSS MiB": rss, "worker CPU while idle": f"{cpu_share:.1%}", "database MiB": float(size),
            "due message: enqueue → send, ms (median of 5)": statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=30)
    args = parser.parse_args()
    with workdir() as work:
        rows = [measure(work, 0, args.idle), measure(work, args.instances, args.idle)]
    print_table(f"Idle cost: {args.instances} instances with one message due in a day, 1 worker × 8 threads", rows)


if __name__ == "__main__":
    main()
