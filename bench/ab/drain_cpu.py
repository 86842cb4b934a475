"""Before/after driver for dispatch: drain.py's `ours()` on 300 instances × 10 messages and on
one instance with a backlog of 500 (rates, and CPU ms per message of the worker and PostgreSQL).
Run from a tree's bench/ directory (docs/benchmarks.md):

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/drain_cpu.py
"""
from drain import ours
from harness import workdir

with workdir() as work:
    many, many_ordered = ours(work, 300, 10, {})   # 300 instances × 10 messages
    hot, hot_ordered = ours(work, 1, 500, {})      # one instance, backlog of 500
    print("RESULT", many, hot, many_ordered and hot_ordered)
