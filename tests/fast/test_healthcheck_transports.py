"""`wmq healthcheck worker` fails, saying why, when the worker cannot load the library of the
transport it is configured for (WHATSAPP_TRANSPORT=neonize): an image without libmagic is made
here by a `magic` module that fails as python-magic does without it, put first on PYTHONPATH.
The healthcheck runs as the probe runs it, in a process of its own (it loads the Go library in a
child of that: none of it in pytest's process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

#: What python-magic raises when ctypes finds no libmagic (magic/loader.py).
NO_LIBMAGIC = 'raise ImportError("failed to find libmagic.  Check your installation")\n'


def healthcheck(tmp_path: Path, transport: str, *, without_libmagic: bool) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "worker-alive").touch()  # a heartbeat thread that just went round
    path = [str(ROOT)]
    if without_libmagic:
        shadow = tmp_path / "no-libmagic"
        shadow.mkdir(exist_ok=True)
        (shadow / "magic.py").write_text(NO_LIBMAGIC)
        path.insert(0, str(shadow))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WHATSAPP_", "MESSAGE_QUEUE_"))}
    env.update(DATA_DIR=str(data), WHATSAPP_TRANSPORT=transport, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-m", "service.cli", "healthcheck", "worker"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_worker_that_cannot_load_neonize_is_unhealthy_and_says_why(tmp_path: Path) -> None:
    result = healthcheck(tmp_path, "neonize", without_libmagic=True)
    assert result.returncode == 1, result
    assert "unhealthy: neonize cannot be loaded: ImportError: failed to find libmagic" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, "one line, for the probe's event"


def test_a_worker_that_loads_neonize_is_healthy(tmp_path: Path) -> None:
    result = healthcheck(tmp_path, "neonize", without_libmagic=False)
    assert result.returncode == 0, result.stderr


def test_a_simulator_deployment_does_not_need_neonize(tmp_path: Path) -> None:
    """Its workers load no WhatsApp library: one they cannot load must not restart them."""
    result = healthcheck(tmp_path, "simulator", without_libmagic=True)
    assert result.returncode == 0, result.stderr



def test_the_library_is_loaded_once_per_container_and_later_probes_read_the_answer(tmp_path: Path) -> None:
    """Loading Go costs a second of CPU; whether it loads is the image's property."""
    assert healthcheck(tmp_path, "neonize", without_libmagic=True).returncode == 1
    record = tmp_path / "data" / "transport-check-neonize"
    assert "failed to find libmagic" in record.read_text()
    # The same container (DATA_DIR) probed again: the answer is read, not loaded anew.
    record.write_text("ImportError: recorded by the first probe")
    again = healthcheck(tmp_path, "neonize", without_libmagic=False)
    assert again.returncode == 1 and "recorded by the first probe" in again.stderr
