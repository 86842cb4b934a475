"""Where a drain's PostgreSQL time goes, function by function (`track_functions = 'all'`,
`pg_stat_user_functions`): 300 instances × 10 messages through one worker of 8 threads.
Run from a tree's bench/ directory, to compare two trees (docs/benchmarks.md):

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/function_times.py
"""
import time

import psycopg
from drain import drain, queue_backlog
from harness import Stack, database, workdir

with workdir() as work, database(work / "db") as url:
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"ALTER DATABASE \"{name}\" SET track_functions = 'all'")
    stack = Stack(url, work / "stack", {"MESSAGE_QUEUE_WORKER_THREADS": 8, "LOG_LEVEL": "WARNING"})
    stack.start_api()
    try:
        queue_backlog(stack, 300, 10)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_reset()")
        print(drain(stack, 3000, 600))
        for worker in list(stack.workers):
            stack.stop_process(worker)
        time.sleep(2)  # backends flush their function counts at exit
        with psycopg.connect(url, autocommit=True) as conn:
            for row in conn.execute("SELECT funcname, calls, round(total_time::numeric, 1),"
                                    " round(self_time::numeric, 1) FROM pg_stat_user_functions"
                                    " ORDER BY total_time DESC LIMIT 25"):
                print(*row)
    finally:
        stack.stop()
