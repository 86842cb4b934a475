"""Before/after driver for HTTP enqueue: one API process under wrk (16 connections, 100
instances, two 12 s runs after a warm-up), with requests/s and CPU per request of the API process
and of the whole PostgreSQL server. Run from a tree's bench/ directory (docs/benchmarks.md):

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/enqueue_cpu.py
"""
import sys

sys.path.insert(0, ".")
import psutil
from enqueue import wrk_load
from harness import Stack, create_instances, database, postgres_cpu_seconds, workdir

with workdir() as work, database(work) as url:
    stack = Stack(url, work / "stack", {"LOG_LEVEL": "WARNING"})
    stack.start_api()
    try:
        instances = create_instances(stack, 100)
        base = f"http://127.0.0.1:{stack.port}"
        wrk_load([base], instances, 16, 3, work)  # warm-up
        api = psutil.Process(stack.api.pid)
        for _ in range(2):
            c0, p0 = api.cpu_times(), postgres_cpu_seconds(url)
            n0 = stack.one("SELECT count(*) AS n FROM messages")["n"]
            rate = wrk_load([base], instances, 16, 12, work)
            c1, p1 = api.cpu_times(), postgres_cpu_seconds(url)
            n = stack.one("SELECT count(*) AS n FROM messages")["n"] - n0
            api_ms = 1000 * ((c1.user + c1.system) - (c0.user + c0.system)) / n
            pg_ms = 1000 * (p1 - p0) / n
            print(f"RATE {rate:.0f}/s api {api_ms:.3f} ms/req pg {pg_ms:.3f} ms/req")
    finally:
        stack.stop()
