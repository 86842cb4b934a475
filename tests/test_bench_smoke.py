"""Benchmarks are not tests, but each script must keep running: a tiny run of each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("drain.py", ["--instances", "2", "--per-instance", "3", "--hot", "2"], "| kept |"),
        ("enqueue.py", ["--seconds", "1", "--clients", "2", "--instances", "2"], "pgbench"),
        ("lateness.py", ["--instances", "2", "--spread", "1"], "| 1s | on |"),
        ("observed.py", ["--rounds", "1", "--instances", "2", "--per-instance", "3", "--cost-requests", "2"],
         "| heavy (each every 1 s) |"),
        ("idle.py", ["--instances", "5", "--idle", "1"], "| 5 | 5 | 0 |"),
        ("growth.py", ["--sizes", "2", "--messages", "6", "--hot", "4", "--seconds", "1", "--spread", "1",
                       "--plot", "{tmp}/growth.png"], "| 2 |"),
        ("leases.py", ["--workers", "3", "--sessions", "20", "--measure", "1", "--interval", "0.5"],
         "| 3 | 20 |"),
        ("paced.py", ["--instances", "4", "--per-instance", "3", "--interval", "1", "--workers", "1", "--threads", "4",
                      "--warmup", "0.5", "--grace", "3"], "| 4 × 1/1 s | 1 × 4 |"),
        ("webhooks.py", ["--threads", "8", "--slow", "1", "--instances", "2", "--per-instance", "2", "--timeout", "1"],
         "| 8 | 1 | 4 |"),
        # dramatiq-postgres alone: the dramatiq-pg side needs its own venv (a pip install); `make bench` runs it.
        ("broker_choice.py", ["--only", "dramatiq-postgres", "--order", "20", "--drain", "200", "--future", "20",
                              "--timeout", "5"], "| dramatiq-postgres |"),
    ],
)
def test_benchmark_script_runs(script: str, args: list[str], expected: str, tmp_path: Path, admin_url: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    # Each run makes its databases in the suite's server instead of a server of its own each time
    # (an initdb and a start per measurement: a minute of the suite).
    env = {**os.environ, "BENCH_DATABASE_URL": admin_url}
    result = subprocess.run([sys.executable, script, *args], cwd=ROOT / "bench", capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout and "BROKEN" not in result.stdout
    if script == "lateness.py":
        rows = [line for line in result.stdout.splitlines() if line.startswith(("| 100ms", "| 1s"))]
        assert len(rows) == 4 and all(row.endswith("| 0 |") for row in rows), "a message went early"
    if script == "growth.py":
        assert (tmp_path / "growth.png").stat().st_size > 10_000, "the plot was not drawn"
    if script == "broker_choice.py":
        assert "| dramatiq-pg |" not in result.stdout, "--only dramatiq-postgres measured dramatiq-pg too"
        assert ".venv-dramatiq-pg" not in result.stderr, "--only dramatiq-postgres built dramatiq-pg's venv"
        rows = [line for line in result.stdout.splitlines() if line.startswith("| dramatiq-postgres |")]
        assert len(rows) == 6 and all(row.endswith("| none |") for row in rows), "a measurement failed"
