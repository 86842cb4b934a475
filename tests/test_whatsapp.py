"""The neonize transport up to the network edge. Whatever loads neonize's Go library runs in a
subprocess (tests/whatsapp_checks.py, or real worker processes): a Go panic must not end pytest."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import ROOT, Stack, wait_until


def run_check(name: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-m", "tests.whatsapp_checks", name], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def test_every_message_type_builds_the_whatsapp_message_field_by_field() -> None:
    assert "every type checked" in run_check("message_building")


def test_session_events_move_the_instance_state_and_logout_stops_sends(database_url: str) -> None:
    assert "logged out" in run_check("session_events", DATABASE_URL=database_url)


def test_unreachable_whatsapp_leaves_the_instance_disconnected_and_others_flowing(make_stack: Any) -> None:
    stack: Stack = make_stack()
    real = stack.create_instance(transport="neonize")
    simulated = stack.create_instance()
    waiting = stack.send_text(real, "for a real phone")["zaapId"]
    flowing = stack.send_text(simulated, "simulated")["zaapId"]
    stack.wait_completed([flowing], timeout=30)

    def connect_failed() -> bool:
        row = stack.one("SELECT connection_state, connection_detail FROM instances WHERE id = %s", (real["id"],))
        return row["connection_state"] == "disconnected" and "failed to dial" in (row["connection_detail"] or "")

    wait_until(connect_failed, 60, "the connect attempt to fail")
    status = stack.http.get(f"{stack.base(real)}/status").json()
    assert (status["connected"], status["state"]) == (False, "disconnected")
    assert "failed to dial" in status["error"]

    def snoozed() -> bool:
        return any("disconnected" in (e["detail"] or "") for e in stack.history(waiting))

    wait_until(snoozed, 60, "the real instance's head to be snoozed")
    job = stack.job(waiting)
    assert (job["status"], job["attempts"]) == ("scheduled", 0)
    assert stack.one("SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'whatsmeow'")["n"] >= 17


@pytest.fixture
def silent_proxy() -> Iterator[str]:
    """A TCP listener that accepts and never answers: a WhatsApp that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    for connection in accepted:
        connection.close()
    server.close()


def test_a_hanging_connect_blocks_no_message_thread(make_stack: Any, silent_proxy: str) -> None:
    stack: Stack = make_stack(MESSAGE_QUEUE_WORKER_THREADS=1, WHATSAPP_PROXY=silent_proxy)
    real = stack.create_instance(transport="neonize")
    wait_until(lambda: stack.one("SELECT connection_state FROM instances WHERE id = %s",
                                 (real["id"],))["connection_state"] == "connecting", 30, "the connect to start")
    stack.send_text(real, "waits for the connection")
    simulated = stack.create_instance()
    ids = [stack.send_text(simulated, f"m{n}")["zaapId"] for n in range(3)]
    stack.wait_completed(ids, timeout=30)
    assert stack.one("SELECT connection_state FROM instances WHERE id = %s", (real["id"],))["connection_state"] \
        == "connecting"
    # Stopping does not wait out the stuck connect (about a minute in the Go library).
    assert stack.stop_process(stack.workers[0], timeout=20) == 0


def test_pairing_routes(make_stack: Any) -> None:
    stack: Stack = make_stack(workers=0, WHATSAPP_COMMAND_TIMEOUT="1s")
    real = stack.create_instance(transport="neonize")
    simulated = stack.create_instance()
    base = stack.base(real)

    assert stack.http.get(f"{stack.base(simulated)}/qr-code").status_code == 409
    no_qr = stack.http.get(f"{base}/qr-code")
    assert no_qr.status_code == 409 and "no QR code yet" in no_qr.json()["error"]
    # No worker holds the session: the command is not answered, and nothing is left pending.
    unanswered = stack.http.get(f"{base}/phone-code/5511988887777")
    assert unanswered.status_code == 409 and "answered" in unanswered.json()["error"]
    assert stack.one("SELECT count(*) AS n FROM instance_commands")["n"] == 0
    assert stack.http.get(f"{base}/phone-code/not-a-phone").json()["field"] == "phone"

    stack.all("UPDATE instances SET qr_code = '2@abc,def', qr_updated_at = now(), connection_state = 'qr'"
              " WHERE id = %s RETURNING id", (real["id"],))
    qr = stack.http.get(f"{base}/qr-code").json()
    assert qr["value"] == "2@abc,def" and qr["image"].startswith("data:image/png;base64,")
    image = stack.http.get(f"{base}/qr-code/image")
    assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")

    status = stack.http.get(f"{base}/status").json()
    assert (status["connected"], status["state"], status["transport"]) == (False, "disconnected", "neonize")
    assert status["error"] == "no worker holds the session"


def test_a_dead_session_holder_leaves_no_instance_connected(make_stack: Any) -> None:
    """A Go panic kills the worker holding the sessions: its instances must not stay connected."""
    stack: Stack = make_stack(workers=0)
    real = stack.create_instance(transport="neonize")
    stack.all("UPDATE instances SET connection_state = 'connected', owner_worker_id = gen_random_uuid()"
              " WHERE id = %s RETURNING id", (real["id"],))
    status = stack.http.get(f"{stack.base(real)}/status").json()
    assert (status["connected"], status["error"]) == (False, "no worker holds the session")
    with stack.core() as core:
        released = core.release_dead_sessions()
    assert released == [{"id": uuid.UUID(real["id"])}]
    row = stack.one("SELECT connection_state, connection_detail, owner_worker_id FROM instances WHERE id = %s",
                    (real["id"],))
    assert row == {"connection_state": "disconnected", "connection_detail": "the worker holding the session died",
                   "owner_worker_id": None}


def test_simulator_instances_disconnect_and_restart_over_http(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    assert stack.http.get(f"{base}/status").json()["connected"] is True
    stack.http.post(f"{base}/disconnect")
    status = stack.http.get(f"{base}/status").json()
    assert (status["connected"], status["state"]) == (False, "disconnected")
    held = stack.send_text(instance, "after the restart")["zaapId"]
    stack.http.post(f"{base}/restart")
    stack.wait_completed([held], timeout=30)


def test_minimum_send_interval_spaces_an_instance_sends(make_stack: Any) -> None:
    stack: Stack = make_stack(WHATSAPP_MIN_SEND_INTERVAL="1s")
    instance = stack.create_instance()
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(3)]
    stack.wait_completed(ids, timeout=30)
    sends = stack.sends(instance)
    for earlier, later in zip(sends, sends[1:], strict=False):
        assert (later["started_at"] - earlier["ended_at"]).total_seconds() >= 1.0


def test_one_worker_holds_the_sessions_and_another_takes_over_when_it_dies(make_stack: Any) -> None:
    stack: Stack = make_stack(workers=2)
    real = stack.create_instance(transport="neonize")

    def holder() -> str | None:
        row = stack.one("SELECT owner_worker_id FROM instances WHERE id = %s", (real["id"],))
        return str(row["owner_worker_id"]) if row["owner_worker_id"] else None

    first = wait_until(holder, 60, "a worker to take the session")
    waiting = stack.send_text(real, "routed to the holder")["zaapId"]
    wait_until(lambda: any("disconnected" in (e["detail"] or "") for e in stack.history(waiting)), 60, "a snooze")
    claimers = {str(e["worker_id"]) for e in stack.history(waiting) if e["to_status"] == "sending"}
    assert claimers == {first}, "only the worker holding the session may claim its messages"
    assert stack.one("SELECT queue_name FROM dramatiq.queue q JOIN messages m ON m.dispatch_id = q.message_id"
                     " WHERE m.zaap_id = %s", (waiting,))["queue_name"] == "whatsapp-sessions"

    process = stack.worker_process(first)
    process.kill()
    process.wait(timeout=10)
    wait_until(lambda: (h := holder()) is not None and h != first, 60, "the other worker to take over")
    simulated = stack.create_instance()
    flowing = stack.send_text(simulated, "still flowing")["zaapId"]
    stack.wait_completed([flowing], timeout=30)


def test_smoke_script_explains_itself() -> None:
    result = subprocess.run([sys.executable, "scripts/smoke_whatsapp.py", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Linked devices" in result.stdout
