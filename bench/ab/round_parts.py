"""A lease round's parts, timed one statement at a time from one connection (best of five):
10,000 session instances, 300 workers with fresh heartbeats whose rounds have spread the leases
(docs/benchmarks.md, "Lease rounds at fleet scale"). "insert scan" is the statement each round
ran before commit c881338 (the lease rows of instances that had none).

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/round_parts.py [workers]
"""
import sys
import time
import uuid
from typing import Any

import psycopg
from harness import database, workdir
from leases import CREATE_SESSIONS, QUEUE

from service.core import queries
from service.core.routing import DELIVER_ACTOR

PARTS = {
    "insert scan": "INSERT INTO session_leases (instance_id) SELECT i.id FROM instances i"
                   " JOIN transports t ON t.name = i.transport WHERE t.session_bound ON CONFLICT DO NOTHING",
    "count all": "SELECT count(*) FROM session_leases",
    "count live": "SELECT count(*) FROM dramatiq.worker w WHERE w.heartbeat_at > now() - interval '60 s'",
    "acquisition scan": "SELECT l.instance_id FROM session_leases l WHERE l.worker_id IS NULL"
                        " OR (l.worker_id <> %(worker_id)s AND wmq_lease_abandoned(l.worker_id, l.expires_at, 60))"
                        " ORDER BY l.worker_id NULLS FIRST, l.instance_id LIMIT 1",
    "answer": "SELECT l.instance_id, i.transport, l.fence FROM session_leases l JOIN instances i"
              " ON i.id = l.instance_id WHERE l.worker_id = %(worker_id)s",
}

workers = int(sys.argv[1]) if len(sys.argv) > 1 else 300
with workdir() as work, database(work / "db") as url, psycopg.connect(url, autocommit=True) as conn:
    conn.execute(CREATE_SESSIONS, {"n": 10_000})
    ids = [uuid.uuid4() for _ in range(workers)]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO dramatiq.worker (worker_id, heartbeat_at) VALUES (%s, now())", [(w,) for w in ids])
    params: dict[str, Any] = {"ttl_s": 60, "heartbeat_ttl_s": 60, "judge": True, "resend": False, "acquire": True,
                              "stopping": False, "queue": QUEUE, "actor": DELIVER_ACTOR}
    for _ in range(2):
        for worker in ids:
            conn.execute(queries.LEASE_ROUND, {**params, "worker_id": worker}).fetchall()
    conn.execute("ANALYZE")
    mine = {**params, "worker_id": ids[1]}
    for label, statement in {"round": queries.LEASE_ROUND, "renewal": queries.RENEW_LEASES, **PARTS}.items():
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            conn.execute(statement, mine)
            best = min(best, time.perf_counter() - began)
        print(f"{label}: {best * 1000:.2f} ms")
