"""`wmq healthcheck`, the image's HEALTHCHECK and the worker's liveness probe, against real
processes: a running worker and API are healthy; a worker frozen (SIGSTOP) past three heartbeat
intervals is not, and is again once it runs; a worker whose database is unreachable still is (an
outage is not a death)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

from tests.stack import ROOT, Stack, wait_until
from workers.liveness import Heartbeat


def healthcheck(stack: Stack, role: str) -> int:
    return subprocess.run([sys.executable, "-m", "service.cli", "healthcheck", role], cwd=ROOT, env=stack.env,
                          capture_output=True, timeout=30).returncode


def test_a_frozen_worker_is_unhealthy_and_a_running_one_healthy(stack: Stack) -> None:
    assert healthcheck(stack, "worker") == 0 and healthcheck(stack, "api") == 0
    worker = stack.workers[0]
    worker.send_signal(signal.SIGSTOP)
    try:
        # The limit is 3 heartbeat intervals + 5 s: 8 s with the tests' 1 s interval.
        wait_until(lambda: healthcheck(stack, "worker") == 1, 20, "the frozen worker to be unhealthy", interval=1)
    finally:
        worker.send_signal(signal.SIGCONT)
    wait_until(lambda: healthcheck(stack, "worker") == 0, 10, "the worker to be healthy again", interval=0.5)
    assert stack.api is not None
    stack.stop_process(stack.api)
    assert healthcheck(stack, "api") == 1


def test_the_heartbeat_thread_keeps_the_worker_alive_without_its_database(tmp_path: Path) -> None:
    alive = tmp_path / "worker-alive"
    heartbeat = Heartbeat("postgresql://wmq@127.0.0.1:1/nowhere", uuid4(), interval=0.2, ttl=1.0, alive_file=alive)
    heartbeat.start()
    try:
        wait_until(alive.exists, 5, "the liveness file")
        first = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > first, 5, "the liveness file touched again")
        assert not heartbeat.may_judge()
    finally:
        heartbeat.stop()


