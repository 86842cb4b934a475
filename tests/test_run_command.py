"""The README's first command: `wmq run` with nothing set starts an embedded PostgreSQL, the API
and a worker; a message goes out; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.stack import ROOT, free_port, wait_until


def test_run_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ADMIN_TOKEN", "MESSAGE_QUEUE"))}
    env.update({"DATA_DIR": str(tmp_path / "data"), "PORT": str(port),
                "MESSAGE_QUEUE_MIN_JITTER": "0", "MESSAGE_QUEUE_MAX_JITTER": "0"})
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "run"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            try:
                return http.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "wmq run to serve")
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        assert token in (tmp_path / "run.log").read_text(), "the admin token is printed"
        instance = http.post("/instances", headers={"Authorization": f"Bearer {token}"}).json()
        base = f"/instances/{instance['id']}/token/{instance['token']}"
        sent = http.post(f"{base}/send-text", json={"phone": "5511999999999", "message": "hi"}).json()

        def delivered() -> bool:
            events = http.get(f"/simulator/instances/{instance['id']}/events",
                              headers={"Authorization": f"Bearer {token}"}).json()
            return any(e["zaapId"] == sent["zaapId"] for e in events)

        wait_until(delivered, 60, "the message to reach the simulator")
        assert (tmp_path / "data" / "pg" / "PG_VERSION").exists()
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=90)
        http.close()
    assert code == 0, (tmp_path / "run.log").read_text()
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists(), "the embedded PostgreSQL stopped"
