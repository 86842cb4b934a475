"""Before/after driver for dispatch: drain.py's `ours()` on 300 instances × 10 messages and on
one instance with a backlog of 500 (rates, and CPU ms per message of the worker and PostgreSQL).
Run from a tree's bench/ directory (docs/benchmarks.md):

    cd bench && PYTHONPATH=. ../.venv/bin/python ab/drain_cpu.py [simulator | simulator-session]

The optional transport (since issue 15) runs the same backlog on session instances, each leased
to the worker, so the leases' own cost shows beside the plain simulator's.
"""
import sys

from drain import ours
from harness import workdir

transport = sys.argv[1] if len(sys.argv) > 1 else "simulator"
with workdir() as work:
    many, many_ordered = ours(work, 300, 10, {}, transport)   # 300 instances × 10 messages
    hot, hot_ordered = ours(work, 1, 500, {}, transport)      # one instance, backlog of 500
    print("RESULT", many, hot, many_ordered and hot_ordered)
