"""Idle WhatsApp sessions (issue 15): the memory, CPU, threads and store connections of one worker
holding N neonize sessions, offline.

    cd bench && ../.venv/bin/python sessions.py [--sizes 1 50 100] [--idle 30] [--settle 15]

Each size is one worker process holding every session (one worker: its leases are all of them),
started on the same database as the size before with more instances added, so the per-session
figures are slopes between sizes, on the same machine in one run.

What a session is here: a `neonize` instance with a linked device in whatsmeow's store (the rows
pairing leaves, fabricated: tests/whatsmeow_rows.py), whose worker builds its client, opens its
store and dials WhatsApp. There is no WhatsApp here, so every dial goes through
`WHATSAPP_PROXY` to a local proxy that accepts the TCP connection and never answers: each session
stays `connecting`, its client, its store pool and its Go dial in place, as a connected session's
would be, without the open websocket's buffers, keepalives (one ping every ~20 s) or incoming
traffic. Those are not measured: a live account adds them.

A worker makes its sessions' registry writes one at a time: each connect holds neonize's
registry exclusively (workers/transports/neonize/registry.py) until its dial reaches the worker's
dial gate, and, once WhatsApp answers, shared until its first callback. Here nothing answers, so
"Dials/s" is the rate of the writes alone (before issue 21 a connect held the registry until its
first event or a 3 s grace, and that was the rate). The gate dials the proxy given here as
`WHATSAPP_PROXY`.

Per size, after every session has dialled (the proxy's count) and `settle` seconds more, over
`idle` seconds:
- the worker's RSS (MiB) and its CPU (cores), and its threads (Python's and Go's);
- the PostgreSQL connections the session stores hold (`application_name` 'wmq-store:…') and the
  RSS of those backends (unique memory: USS), as each session's store pool keeps its own;
- the sessions' states (all `connecting`, or what else).
PostgreSQL runs with max_connections raised (the default 100 would be the bound, not memory).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg
from harness import Stack, print_table, wait_until, workdir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.outage import Database  # noqa: E402
from tests.whatsmeow_rows import insert_device  # noqa: E402
from workers.transports.neonize.store import init_store  # noqa: E402

STATES = "SELECT connection_state, count(*) AS n FROM instances WHERE transport = 'neonize' GROUP BY 1 ORDER BY 1"
STORE_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'wmq-store:%'"


class Blackhole(threading.Thread):
    """A proxy that accepts every connection and never says a word."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0

    def run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                self.held.append(conn)
                self.accepted += 1


def add_sessions(stack: Stack, database_url: str, count: int, first: int) -> None:
    """`count` neonize instances with a linked device each (numbers from `first` on)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for n in range(first, first + count):
            instance = stack.create_instance(name=f"session-{n}", transport="neonize")
            jid = f"5511{n:09d}:1@s.whatsapp.net"
            insert_device(conn, jid)
            conn.execute("UPDATE instances SET whatsapp_jid = %s WHERE id = %s", (jid, instance["id"]))


def states(stack: Stack) -> dict[str, int]:
    return {row["connection_state"]: row["n"] for row in stack.all(STATES)}


def uss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_full_info().uss
    return total / 2**20


def measure(stack: Stack, proxy: Blackhole, size: int, idle: float, settle: float) -> dict[str, Any]:
    before = proxy.accepted
    worker = stack.start_worker()
    began = time.monotonic()
    # `connecting` is recorded before a session waits for the registry's connect gate: count dials.
    wait_until(lambda: proxy.accepted - before >= size, 60 + 5 * size, f"{size} sessions to dial", interval=0.5)
    dialled = time.monotonic() - began
    time.sleep(settle)  # the start-up's garbage and caches settle
    process = psutil.Process(worker.pid)
    cpu_before = sum(process.cpu_times()[:2])
    time.sleep(idle)
    cpu = (sum(process.cpu_times()[:2]) - cpu_before) / idle
    rss = process.memory_info().rss / 2**20
    threads = process.num_threads()
    backends = [row["pid"] for row in stack.all(STORE_BACKENDS)]
    backends_mib = uss_mib(backends)
    seen = states(stack)
    stack.stop_process(worker, timeout=60)
    stack.workers.remove(worker)
    return {"sessions": size, "all dialled after s": dialled, "dials/s": size / dialled, "worker RSS MiB": rss,
            "worker CPU (cores)": cpu,
            "worker threads": threads, "store connections": len(backends),
            "their backends' USS MiB": backends_mib,
            "states": ", ".join(f"{state} {n}" for state, n in seen.items())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50, 100])
    parser.add_argument("--idle", type=float, default=30.0, help="seconds measured, per size")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds after every session dialled")
    args = parser.parse_args()
    proxy = Blackhole()
    proxy.start()
    with workdir() as work:
        database = Database(work / "pg")
        try:
            with psycopg.connect(database.url, autocommit=True) as conn:
                conn.execute(f"ALTER SYSTEM SET max_connections = {3 * max(args.sizes) + 200}")
            database.stop()
            database.start()
            stack = Stack(database.url, work / "stack", {
                "WHATSAPP_PROXY": f"http://127.0.0.1:{proxy.port}", "LOG_LEVEL": "WARNING",
                "MESSAGE_QUEUE_HEARTBEAT_INTERVAL": "15s", "MESSAGE_QUEUE_HEARTBEAT_TTL": "60s",
                "MESSAGE_QUEUE_LEASE_INTERVAL": "2s", "MESSAGE_QUEUE_MAINTENANCE_INTERVAL": "30s",
                "MESSAGE_QUEUE_POLL_INTERVAL": "100ms"})
            try:
                stack.start_api()
                init_store(database.url, "whatsmeow")  # whatsmeow's tables, as a worker makes them
                rows, made = [], 0
                for size in sorted(args.sizes):
                    add_sessions(stack, database.url, size - made, made)
                    made = size
                    rows.append(measure(stack, proxy, size, args.idle, args.settle))
                    print(rows[-1], file=sys.stderr, flush=True)
                base = rows[0]
                base["RSS per extra session KiB"] = "—"
                for row in rows[1:]:
                    extra = row["sessions"] - base["sessions"]
                    row["RSS per extra session KiB"] = 1024 * (row["worker RSS MiB"] - base["worker RSS MiB"]) / extra
                print_table(f"Idle neonize sessions in one worker (offline: each dials a proxy that never answers;"
                            f" {args.idle:g} s measured after {args.settle:g} s of settling)", rows)
                print(f"proxy connections accepted: {proxy.accepted}")
            finally:
                stack.stop()
        finally:
            database.close()


if __name__ == "__main__":
    main()
