"""What the lease check costs a transition, called as the transitions call it (from PL/pgSQL,
6,000 calls, best of two): `wmq_lease_ok` as it is, its body as a LANGUAGE sql function, and
the statement without the check (docs/benchmarks.md, "The lease checks' cost").

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/lease_ok_calls.py
"""
import time

import psycopg
from harness import database, workdir

BODY = """NOT EXISTS (SELECT 1 FROM instances i JOIN transports t ON t.name = i.transport
                          WHERE i.id = p_instance AND t.session_bound)
          OR EXISTS (SELECT 1 FROM session_leases l WHERE l.instance_id = p_instance AND l.worker_id = p_worker
                        AND (p_fence IS NULL OR l.fence = p_fence))"""
SETUP = [
    "INSERT INTO instances (id, token, name) SELECT gen_random_uuid(), md5(random()::text), 'x' || n"
    " FROM generate_series(1, 300) n",
    "CREATE FUNCTION lease_ok_sql(p_instance uuid, p_worker uuid, p_fence bigint DEFAULT NULL) RETURNS boolean"
    f" LANGUAGE sql STABLE AS $$ SELECT {BODY} $$",
    *[f"""CREATE FUNCTION t_{name}(p uuid) RETURNS int LANGUAGE plpgsql AS $$ DECLARE n int; BEGIN
          SELECT count(*) INTO n FROM instances WHERE id = p{check}; RETURN n; END $$"""
      for name, check in (("none", ""), ("sql", " AND lease_ok_sql(id, p)"), ("plpgsql", " AND wmq_lease_ok(id, p)"))],
]

with workdir() as work, database(work / "db") as url, psycopg.connect(url, autocommit=True) as conn:
    for statement in SETUP:
        conn.execute(statement)
    for name in ("none", "sql", "plpgsql"):
        best = float("inf")
        for _ in range(2):
            began = time.perf_counter()
            conn.execute(f"SELECT sum(t_{name}(id)) FROM instances, generate_series(1, 20)")
            best = min(best, time.perf_counter() - began)
        print(f"{name}: {best / 6000 * 1000:.3f} ms per call")
