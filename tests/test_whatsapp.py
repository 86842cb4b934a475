"""The neonize transport up to the network edge. Whatever loads neonize's Go library runs in a
subprocess (tests/whatsapp_checks.py, or real worker processes): a Go panic must not end pytest."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.core import maintenance
from tests.stack import ROOT, Stack, run_child_check, wait_until
from tests.whatsmeow_rows import insert_device


def run_check(name: str, **env: str) -> str:
    return run_child_check("whatsapp_checks", name, **env)


def test_every_message_type_builds_the_whatsapp_message_field_by_field() -> None:
    assert "every type checked" in run_check("message_building")


def test_an_abandoned_whatsapp_call_keeps_its_instance_waiting() -> None:
    assert "the instance waited for it" in run_check("abandoned_call")


def test_every_connection_outcome_is_a_state_with_its_reason(database_url: str) -> None:
    assert "every outcome is a state with its reason" in run_check("session_events", DATABASE_URL=database_url)


def test_each_client_has_a_registry_key_of_its_own_and_no_finalizer() -> None:
    assert "one per client, no finalizer" in run_check("client_keys")


def test_a_number_whatsapp_knows_in_another_form_is_sent_there() -> None:
    assert "sent to the registered form, remembered" in run_check("number_forms")


def test_pairing_runs_in_a_child_process_that_ends_with_the_attempt() -> None:
    assert "stuck attempt killed" in run_check("pairing")


def test_the_session_store_takes_commas_and_keeps_no_connection_of_a_finished_connect(database_url: str) -> None:
    assert "the session none in 3" in run_check("store", DATABASE_URL=database_url)


def test_an_unpaired_instance_waits_for_a_pairing_request_and_others_flow(make_stack: Any) -> None:
    """A neonize instance connects nothing until a QR code is asked for; its messages wait, the
    simulator's flow. Asking starts a real pairing attempt, which cannot reach WhatsApp from here:
    the answer says so, and the instance is unpaired again, saying why."""
    stack: Stack = make_stack(MESSAGE_QUEUE_DISCONNECT_RETRY_DELAY="300ms")
    real = stack.create_instance(transport="neonize")
    simulated = stack.create_instance()
    waiting = stack.send_text(real, "for a real phone")["zaapId"]
    flowing = stack.send_text(simulated, "simulated")["zaapId"]
    stack.wait_completed([flowing], timeout=30)

    def state() -> dict[str, Any]:
        return stack.one("SELECT connection_state, connection_detail FROM instances WHERE id = %s", (real["id"],))

    wait_until(lambda: state()["connection_state"] == "unpaired", 60, "the session to say it is unpaired")
    assert "request a QR code or a phone code" in state()["connection_detail"]
    status = stack.http.get(f"{stack.base(real)}/status").json()
    assert (status["connected"], status["state"]) == (False, "unpaired")

    def snoozed() -> bool:
        return any("unpaired" in (e["detail"] or "") for e in stack.history(waiting))

    wait_until(snoozed, 60, "the real instance's head to be snoozed")
    job = stack.job(waiting)
    assert (job["status"], job["attempts"]) == ("scheduled", 0), [e["detail"] for e in stack.history(waiting)]
    assert stack.one("SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'whatsmeow'")["n"] >= 17

    answer = stack.http.get(f"{stack.base(real)}/qr-code", timeout=60)
    assert answer.status_code == 409 and "failed to dial" in answer.json()["error"], answer.text
    assert state()["connection_state"] == "unpaired" and "failed to dial" in state()["connection_detail"]
    assert stack.job(waiting)["status"] == "scheduled"


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


def test_a_pairing_attempt_stuck_in_go_ends_at_its_deadline(make_stack: Any, silent_proxy: str) -> None:
    """A WhatsApp that accepts and never answers: the pairing attempt hangs in Go, holds no
    message thread, is killed at its deadline (the instance says so), and the worker still stops
    at once."""
    stack: Stack = make_stack(MESSAGE_QUEUE_WORKER_THREADS=1, WHATSAPP_PROXY=silent_proxy,
                              WHATSAPP_COMMAND_TIMEOUT="2s", WHATSAPP_PAIRING_TIMEOUT="4s")
    real = stack.create_instance(transport="neonize")

    def state() -> dict[str, Any]:
        return stack.one("SELECT connection_state, connection_detail FROM instances WHERE id = %s", (real["id"],))

    wait_until(lambda: state()["connection_state"] == "unpaired", 60, "the session to start")
    answer = stack.http.get(f"{stack.base(real)}/qr-code", timeout=30)
    assert answer.status_code == 409 and "no QR code yet" in answer.json()["error"], answer.text
    assert state()["connection_state"] == "pairing"
    stack.send_text(real, "waits for the pairing")
    simulated = stack.create_instance()
    ids = [stack.send_text(simulated, f"m{n}")["zaapId"] for n in range(3)]
    stack.wait_completed(ids, timeout=30)
    wait_until(lambda: state()["connection_state"] == "unpaired", 30, "the stuck attempt to end")
    assert "expired unused" in state()["connection_detail"]
    children = subprocess.run(["pgrep", "-f", "workers.transports.neonize.pairing"], capture_output=True, text=True)
    assert children.stdout.strip() == "", "the stuck pairing child outlived its deadline"
    assert stack.stop_process(stack.workers[0], timeout=20) == 0


def test_a_store_whatsmeow_cannot_use_is_every_instance_state(make_stack: Any, database_url: str) -> None:
    """A `whatsmeow_version` left in another schema would make whatsmeow skip creating the store:
    the worker says so on every neonize instance instead of failing later; the simulator's flow."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.whatsmeow_version (version integer)")
    stack: Stack = make_stack()
    real = stack.create_instance(transport="neonize")
    state = wait_until(lambda: stack.all("SELECT connection_state, connection_detail FROM instances WHERE id = %s"
                                         " AND connection_state = 'store_error'", (real["id"],)), 60, "store_error")
    assert "whatsmeow_version table in schema public" in state[0]["connection_detail"]
    assert stack.http.get(f"{stack.base(real)}/status").json()["state"] == "store_error"
    simulated = stack.create_instance()
    stack.wait_completed([stack.send_text(simulated, "flows")["zaapId"]], timeout=30)


def test_pairing_routes(make_stack: Any) -> None:
    stack: Stack = make_stack(WHATSAPP_COMMAND_TIMEOUT="1s")
    real = stack.create_instance(transport="neonize")
    simulated = stack.create_instance()
    base = stack.base(real)

    assert stack.http.get(f"{stack.base(simulated)}/qr-code").status_code == 409
    assert stack.http.get(f"{base}/phone-code/not-a-phone").json()["field"] == "phone"
    wait_until(lambda: stack.all("SELECT 1 AS ok FROM instances WHERE id = %s AND connection_state = 'unpaired'",
                                 (real["id"],)), 60, "the session")
    # A code the holder recorded is served as text and as a PNG.
    stack.all("UPDATE instances SET qr_code = '2@abc,def', qr_updated_at = now(), connection_state = 'qr'"
              " WHERE id = %s RETURNING id", (real["id"],))
    qr = stack.http.get(f"{base}/qr-code").json()
    assert qr["value"] == "2@abc,def" and qr["image"].startswith("data:image/png;base64,")
    image = stack.http.get(f"{base}/qr-code/image")
    assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")

    # No worker holds the session: the command is not answered, and nothing is left pending.
    assert stack.stop_process(stack.workers[0], timeout=20) == 0
    unanswered = stack.http.get(f"{base}/phone-code/5511988887777")
    assert unanswered.status_code == 409 and "answered" in unanswered.json()["error"]
    assert stack.one("SELECT count(*) AS n FROM instance_commands")["n"] == 0


def test_a_paired_instance_refuses_another_pairing_with_the_reason(make_stack: Any, database_url: str) -> None:
    """An instance with a linked device (in the store, as after a real pairing) connects with it
    at start; a QR code or phone code for it is refused with a 409 that says why."""
    jid = "5511988887777:3@s.whatsapp.net"
    stack: Stack = make_stack(workers=0)
    real = stack.create_instance(transport="neonize")
    stack.start_worker()
    wait_until(lambda: stack.all("SELECT 1 AS ok FROM information_schema.tables WHERE table_schema = 'whatsmeow'"
                                 " AND table_name = 'whatsmeow_device'"), 60, "the session store")
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert_device(conn, jid)
        conn.execute("UPDATE instances SET whatsapp_jid = %s WHERE id = %s", (jid, real["id"]))
    stack.stop_process(stack.workers[0], timeout=20)
    stack.start_worker()  # a restarted worker reads the linked device from the instance row

    def tried() -> list[dict[str, Any]]:
        return stack.all("SELECT connection_state, connection_detail FROM instances WHERE id = %s AND"
                         " connection_detail LIKE '%%failed to dial%%'", (real["id"],))

    wait_until(tried, 60, "a connect with the linked device (WhatsApp is out of reach here)")
    for route in ("phone-code/5511988887777", "qr-code"):
        refused = stack.http.get(f"{stack.base(real)}/{route}")
        assert refused.status_code == 409 and f"already paired with {jid}" in refused.json()["error"], refused.text
    assert stack.one("SELECT whatsapp_jid FROM instances WHERE id = %s", (real["id"],))["whatsapp_jid"] == jid


def test_a_dead_session_holder_leaves_no_instance_connected(make_stack: Any) -> None:
    """A Go panic kills the worker holding the sessions: its instances must not stay connected."""
    stack: Stack = make_stack(workers=0)
    real = stack.create_instance(transport="neonize")
    stack.all("UPDATE instances SET connection_state = 'connected', owner_worker_id = gen_random_uuid()"
              " WHERE id = %s RETURNING id", (real["id"],))
    status = stack.http.get(f"{stack.base(real)}/status").json()
    assert (status["connected"], status["error"]) == (False, "no worker holds the session")
    with stack.core() as core, core.pool.connection() as conn, conn.transaction():
        assert maintenance.try_lead(conn)
        released = maintenance.release_dead_sessions(core, conn)
    assert released == [{"id": uuid.UUID(real["id"])}]
    row = stack.one("SELECT connection_state, connection_detail, owner_worker_id FROM instances WHERE id = %s",
                    (real["id"],))
    assert row == {"connection_state": "disconnected", "connection_detail": "the worker holding the session died",
                   "owner_worker_id": None}


def test_simulator_instances_disconnect_and_restart_over_http(make_stack: Any) -> None:
    """`POST …/disconnect` takes the simulated instance offline: its message waits, re-checked
    and put back each time with nothing sent, until `POST …/restart` brings it online."""
    # A short re-check, so that the wait is seen to last over several checks.
    stack: Stack = make_stack(MESSAGE_QUEUE_DISCONNECT_RETRY_DELAY="200ms")
    instance = stack.create_instance()
    base = stack.base(instance)
    assert stack.http.get(f"{base}/status").json()["connected"] is True
    assert stack.http.post(f"{base}/disconnect").status_code == 200
    status = stack.http.get(f"{base}/status").json()
    assert (status["connected"], status["state"]) == (False, "disconnected")
    held = stack.send_text(instance, "after the restart")["zaapId"]

    def three_checks() -> list[dict[str, Any]] | None:
        assert stack.sends(instance) == [], "sent while the instance was disconnected"
        history = stack.history(held)
        assert {e["to_status"] for e in history} <= {"scheduled", "sending"}, history
        put_back = [e for e in history if (e["from_status"], e["to_status"]) == ("sending", "scheduled")]
        return put_back if len(put_back) >= 3 else None

    checks = wait_until(three_checks, 30, "three checks while disconnected")
    assert all(e["detail"] == "waiting: simulated instance is disconnected" for e in checks), checks
    assert (checks[-1]["at"] - checks[0]["at"]).total_seconds() >= 0.4, "re-checked after the retry delay"
    assert stack.events(instance) == [], "the simulator saw nothing before the restart"

    assert stack.http.post(f"{base}/restart").status_code == 200
    assert stack.http.get(f"{base}/status").json()["connected"] is True
    stack.wait_completed([held], timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [held]
    assert stack.job(held)["attempts"] == 1, "a check while disconnected is no attempt"


def test_minimum_send_interval_spaces_an_instance_sends(make_stack: Any) -> None:
    stack: Stack = make_stack(WHATSAPP_MIN_SEND_INTERVAL="1s")
    instance = stack.create_instance()
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(3)]
    stack.wait_completed(ids, timeout=30)
    sends = stack.sends(instance)
    for earlier, later in zip(sends, sends[1:], strict=False):
        assert (later["started_at"] - earlier["ended_at"]).total_seconds() >= 1.0


def test_one_worker_holds_the_sessions_and_another_takes_over_when_it_dies(make_stack: Any) -> None:
    """A real-WhatsApp instance's messages go to the worker holding the sessions, and to it only;
    when it dies, another worker takes the sessions over and with them the waiting message.
    No WhatsApp server is reachable, so every claim ends in a snooze (the session is not
    connected): the claims' worker ids say who processed the message."""
    # Three workers, so that after the holder dies one survivor holds the sessions and one does
    # not; a short re-check, so that the message is claimed again and again.
    stack: Stack = make_stack(workers=3, MESSAGE_QUEUE_DISCONNECT_RETRY_DELAY="300ms")
    real = stack.create_instance(transport="neonize")

    def holder() -> str | None:
        row = stack.one("SELECT owner_worker_id FROM instances WHERE id = %s", (real["id"],))
        return str(row["owner_worker_id"]) if row["owner_worker_id"] else None

    def claims(waiting: str, by: Callable[[str], bool]) -> list[dict[str, Any]] | None:
        """Three claims (or more) of `waiting` by workers that `by` accepts, once there are."""
        history = stack.history(waiting)
        # A worker without the sessions that claimed it would have snoozed it with this reason.
        strays = [e for e in history if "does not hold the session" in (e["detail"] or "")]
        assert not strays, f"a worker not holding the sessions processed the message: {strays}"
        claimed = [e for e in history if e["to_status"] == "sending" and by(str(e["worker_id"]))]
        return claimed if len(claimed) >= 3 else None

    first = wait_until(holder, 60, "a worker to take the session")
    waiting = stack.send_text(real, "routed to the holder")["zaapId"]
    before = wait_until(lambda: claims(waiting, lambda worker: True), 60, "three claims by the holder")
    assert {str(e["worker_id"]) for e in before} == {first}, "only the worker holding the session may claim"
    assert all((e["detail"] or "").startswith("waiting: ") for e in stack.history(waiting)
               if e["from_status"] == "sending"), stack.history(waiting)  # snoozed, not failed
    assert stack.one("SELECT queue_name FROM dramatiq.queue q JOIN messages m ON m.dispatch_id = q.message_id"
                     " WHERE m.zaap_id = %s", (waiting,))["queue_name"] == f"whatsapp-s.{first.replace('-', '')[:12]}"

    process = stack.worker_process(first)
    process.kill()
    process.wait(timeout=10)
    second = wait_until(lambda: (h := holder()) != first and h, 60, "another worker to take the sessions over")
    assert stack.worker_process(second).poll() is None
    # Claims by anyone but the dead holder happen after its death: all by the new holder.
    after = wait_until(lambda: claims(waiting, lambda worker: worker != first), 60,
                       "the waiting message to be claimed after the holder died")
    assert {str(e["worker_id"]) for e in after} == {second}, "only the new holder may claim the message"
    assert stack.job(waiting)["status"] in ("scheduled", "sending", "retryable"), "still waiting to be sent"

    simulated = stack.create_instance()
    flowing = stack.send_text(simulated, "still flowing")["zaapId"]
    stack.wait_completed([flowing], timeout=30)


def test_resuming_a_restricted_instance_asks_its_session_to_try_now(make_stack: Any) -> None:
    """An instance restricted by WhatsApp's reach-out time-lock (463): `resume` asks the worker
    holding its session to try the head now (the session's side: tests/whatsapp_session_checks.py
    `time_lock`)."""
    stack: Stack = make_stack()
    real = stack.create_instance(transport="neonize")
    wait_until(lambda: stack.one("SELECT connection_state FROM instances WHERE id = %s",
                                 (real["id"],))["connection_state"] == "unpaired", 60, "the session to be held")
    stack.all("UPDATE instances SET connection_state = 'restricted' WHERE id = %s RETURNING 1", (real["id"],))
    answer = stack.http.post(f"{stack.base(real)}/resume")
    assert answer.status_code == 200 and answer.json() == {"paused": False, "restricted": False}, answer.text
    asked = stack.all("SELECT command, done_at FROM instance_commands WHERE instance_id = %s", (real["id"],))
    assert [(r["command"], r["done_at"] is not None) for r in asked] == [("unrestrict", True)]


def test_smoke_script_explains_itself(tmp_path: Path) -> None:
    """The real-phone smoke script says how to use it, and its --dry-run runs its own flow with
    no phone and no network: every message type through the transport's builders and its send
    loop, with a stand-in for the media upload. A builder, a sample or an import gone stale fails here."""
    script = [sys.executable, "scripts/smoke_whatsapp.py"]
    # The script imports the product from this checkout (not whichever one is installed).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    usage = subprocess.run([*script, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "Linked devices" in usage.stdout and "--dry-run" in usage.stdout
    assert "--pair-phone" in usage.stdout

    store = tmp_path / "smoke.sqlite3"
    result = subprocess.run([*script, "5511999999999", "--dry-run", "--store", str(store)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-4000:]}"
    assert "13 messages for 5511999999999@s.whatsapp.net" in result.stdout
    built = dict(re.findall(r"^(\S+) +built (\w+)(?:, \w+)? \(\d+ bytes\), not sent", result.stdout, re.MULTILINE))
    assert built == {
        "text": "conversation", "image": "imageMessage", "document": "documentMessage",
        "location": "locationMessage", "contact": "contactMessage", "button-list": "interactiveMessage",
        "option-list": "interactiveMessage", "sticker": "stickerMessage", "poll": "messageContextInfo",
        "link": "extendedTextMessage", "audio": "audioMessage", "video": "videoMessage",
        "reaction": "reactionMessage",
    }, result.stdout
    backlog = re.findall(r"^backlog (\d)/5: (sent|waiting)", result.stdout, re.MULTILINE)
    assert [n for n, what in backlog if what == "sent"] == ["1", "2", "3", "4", "5"], result.stdout
    assert ("3", "waiting") in backlog, "the third waited for the restarted session"
    uploads = re.findall(r"upload of (\d+) bytes as (\w+) \(stand-in\)", result.stdout)
    assert [kind for _, kind in uploads] == ["MediaImage", "MediaDocument", "MediaImage", "MediaAudio", "MediaVideo"]
    assert not store.exists(), "a dry run pairs nothing and stores no session"
