"""Session lease rounds at fleet scale (issue 15): what hundreds of workers and thousands of
sessions cost the database, whose rounds run one at a time (a transaction lock).

    cd bench && ../.venv/bin/python leases.py [--workers 10 100 300] [--sessions 1000 10000]
                                             [--interval 2] [--measure 20] [--connections 16]

Per configuration, on a fresh database (embedded PostgreSQL): `sessions` instances of the
session-bound simulator and `workers` workers, each a row of the broker's worker table with a
fresh heartbeat, and each running the worker's own statements (service/core/queries.py
RENEW_LEASES, then LEASE_ROUND, as workers/leases.py does) every `interval` seconds, their
phases spread evenly over the interval. The workers' rounds are run by `connections` threads
of this process with a connection each: the rounds wait for each other in the database
whatever the number of connections. No worker process runs: this is the database's side only.

Figures:
- first shares: seconds from the workers' start (every lease free) until every lease is owned;
- steady window (`measure` seconds): rounds run per second against those due
  (workers / interval), a round's duration (renewal and round, lock wait included) p50 / p99 /
  max, how late rounds started against their schedule (p99), and PostgreSQL's CPU in cores;
- one worker dies: its heartbeat and its leases are set `2 × TTL` in the past (as if it had
  stopped that long ago) and its rounds stop; seconds until the others own all its leases, and
  the longest round meanwhile.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import psycopg
from harness import database, percentile, postgres_cpu_seconds, print_table, wait_until, workdir

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.core import queries  # noqa: E402
from service.core.routing import DELIVER_ACTOR  # noqa: E402

TTL_S = 60.0  # MESSAGE_QUEUE_HEARTBEAT_TTL's default, the leases' TTL too
QUEUE = "wmq"

CREATE_SESSIONS = """
    WITH created AS (
        INSERT INTO instances (id, token, name, transport)
        SELECT gen_random_uuid(), md5(random()::text), 'session-' || n, 'simulator-session'
          FROM generate_series(1, %(n)s) n
        RETURNING id
    )
    INSERT INTO instance_queues (instance_id) SELECT id FROM created
"""
HEARTBEAT = "UPDATE dramatiq.worker SET heartbeat_at = now() WHERE worker_id = ANY(%(live)s)"
#: Session instances nobody owns (a lease row is made by the first round after the instance).
FREE = """
    SELECT count(*) FROM instances i LEFT JOIN session_leases l ON l.instance_id = i.id
     WHERE i.transport = 'simulator-session' AND (l.worker_id IS NULL OR l.worker_id = %(dead)s)
"""
DIE = """
    WITH w AS (UPDATE dramatiq.worker SET heartbeat_at = now() - make_interval(secs => %(ago)s)
                WHERE worker_id = %(dead)s)
    UPDATE session_leases SET expires_at = now() - make_interval(secs => %(ago)s) WHERE worker_id = %(dead)s
"""


class Round(NamedTuple):
    started: float  # monotonic
    lag: float  # seconds after its due time
    seconds: float


class Fleet:
    """The workers' rounds, on schedule, from a few connections."""

    def __init__(self, url: str, workers: list[UUID], connections: int, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.rounds: list[Round] = []
        self.stopped: set[UUID] = set()
        self.stop_event = threading.Event()
        start = time.monotonic() + 0.5
        schedules: list[list[tuple[float, int, UUID]]] = [[] for _ in range(connections)]
        for n, worker in enumerate(workers):
            schedules[n % connections].append((start + interval * n / len(workers), n, worker))
        self.threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in schedules if s]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self, schedule: list[tuple[float, int, UUID]]) -> None:
        heapq.heapify(schedule)
        params: dict[str, Any] = {"ttl_s": TTL_S, "heartbeat_ttl_s": TTL_S, "judge": True, "resend": False,
                                  "acquire": True, "stopping": False, "queue": QUEUE, "actor": DELIVER_ACTOR}
        with psycopg.connect(self.url, autocommit=True) as conn:
            while schedule and not self.stop_event.is_set():
                due, n, worker = heapq.heappop(schedule)
                if self.stop_event.wait(max(0.0, due - time.monotonic())):
                    return
                if worker in self.stopped:
                    continue
                began = time.monotonic()
                conn.execute(queries.RENEW_LEASES, {**params, "worker_id": worker})
                conn.execute(queries.LEASE_ROUND, {**params, "worker_id": worker}).fetchall()
                self.rounds.append(Round(began, began - due, time.monotonic() - began))
                heapq.heappush(schedule, (due + self.interval, n, worker))

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join()


def heartbeats(url: str, live: list[UUID], stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(5):
            conn.execute(HEARTBEAT, {"live": live})


def run(work: Path, workers: int, sessions: int, interval: float, measure: float, connections: int) -> dict[str, Any]:
    with database(work / f"db-{time.monotonic_ns()}") as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_SESSIONS, {"n": sessions})
        ids = [uuid4() for _ in range(workers)]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dramatiq.worker (worker_id, heartbeat_at) VALUES (%s, now())",
                            [(w,) for w in ids])
        live = list(ids)
        stop_beats = threading.Event()
        beats = threading.Thread(target=heartbeats, args=(url, live, stop_beats), daemon=True)
        beats.start()
        fleet = Fleet(url, ids, min(connections, workers), interval)
        began = time.monotonic()
        fleet.start()
        try:
            free = {"dead": None}
            wait_until(lambda: conn.execute(FREE, free).fetchone()[0] == 0, 600,  # type: ignore[index]
                       "every lease owned", interval=0.1)
            first_shares = time.monotonic() - began
            time.sleep(2 * interval)  # past the first rounds
            window_start, cpu_before = time.monotonic(), postgres_cpu_seconds(url)
            time.sleep(measure)
            cpu = (postgres_cpu_seconds(url) - cpu_before) / (time.monotonic() - window_start)
            steady = [r for r in fleet.rounds if window_start <= r.started < window_start + measure]
            dead = ids[0]
            live.remove(dead)
            fleet.stopped.add(dead)
            died = time.monotonic()
            conn.execute(DIE, {"dead": dead, "ago": 2 * TTL_S})
            wait_until(lambda: conn.execute(FREE, {"dead": dead}).fetchone()[0] == 0, 600,  # type: ignore[index]
                       "the dead worker's leases taken over", interval=0.1)
            taken_over = time.monotonic() - died
            during = [r.seconds for r in fleet.rounds if r.started >= died]
        finally:
            fleet.stop()
            stop_beats.set()
            beats.join()
        durations = [r.seconds * 1000 for r in steady]
        return {"workers": workers, "sessions": sessions, "first shares s": first_shares,
                "rounds/s run / due": f"{len(steady) / measure:.1f} / {workers / interval:.1f}",
                "round ms p50": percentile(durations, 50), "round ms p99": percentile(durations, 99),
                "round ms max": max(durations), "late start p99 ms": percentile([r.lag * 1000 for r in steady], 99),
                "PostgreSQL CPU (cores)": cpu, "dead worker's leases taken over after s": taken_over,
                "longest round meanwhile ms": 1000 * max(during, default=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--interval", type=float, default=2.0, help="MESSAGE_QUEUE_LEASE_INTERVAL, seconds")
    parser.add_argument("--measure", type=float, default=20.0, help="seconds of steady rounds measured")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with workdir() as work:
        for sessions in args.sessions:
            for workers in args.workers:
                rows.append(run(work, workers, sessions, args.interval, args.measure, args.connections))
                print(rows[-1], file=sys.stderr, flush=True)
    print_table(f"Lease rounds: every worker renews and runs its round every {args.interval:g} s "
                f"(from {args.connections} connections)", rows)


if __name__ == "__main__":
    main()
