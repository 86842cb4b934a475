"""Before/after driver for the enqueue statement alone: `wmq_enqueue` 5 × 1,000 times from one
connection into 100 instances, milliseconds per call per round. Run from a tree's bench/
directory (docs/benchmarks.md):

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/enqueue_sql.py
"""
import sys
import time
import uuid

sys.path.insert(0, ".")
sys.path.insert(0, "..")
import psycopg
from harness import database, workdir
from psycopg.types.json import Jsonb

from service.core import queries

with workdir() as work, database(work) as url, psycopg.connect(url, autocommit=True) as conn:
    ids = []
    for _ in range(100):
        instance_id = uuid.uuid4()
        conn.execute("INSERT INTO instances (id, token, name, transport) VALUES (%s, 't', '', 'simulator')",
                     (instance_id,))
        conn.execute("INSERT INTO instance_queues (instance_id) VALUES (%s)", (instance_id,))
        ids.append(instance_id)
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for n in range(1000):
            conn.execute(queries.ENQUEUE, {
                "zaap_id": uuid.uuid4().hex, "instance_id": ids[n % 100], "message_type": "text",
                "phone": "5511999999999", "payload": Jsonb({"message": "x"}), "delay_ms": 3_600_000,
                "typing_ms": 0, "jitter_ms": 0, "scheduled_for": None, "max_attempts": 3,
                "queue": "whatsapp", "actor": "deliver"}).fetchone()
        rounds.append((time.perf_counter() - started) / 1000 * 1000)
    print("ms per enqueue:", " ".join(f"{r:.3f}" for r in rounds))
