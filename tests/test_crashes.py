"""Crashes and stops on real worker processes: SIGKILL while sending (both resend policies) or
typing, SIGTERM during a send, two maintenance loops at once, and a slow but live worker."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.stack import Stack, wait_until


def kill_worker_of(stack: Stack, zaap_id: str) -> None:
    """SIGKILL the worker process that holds the message."""
    worker = stack.worker_process(stack.job(zaap_id)["worker_id"])
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)


def kill_during_first_send(stack: Stack, messages: int) -> tuple[dict[str, Any], list[str]]:
    """Queue `messages` on a new instance, SIGKILL the worker in the middle of the first send
    (preparing it: its frame never left), and make later sends instant. Returns the instance and
    the zaap ids."""
    instance = stack.create_instance()
    stack.simulate(instance, prepareMs=3000)
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(messages)]
    stack.wait_status(ids[0], "sending")
    kill_worker_of(stack, ids[0])
    stack.simulate(instance, prepareMs=0)
    return instance, ids


@pytest.mark.parametrize("resend", [True, False], ids=["resend", "discard"])
def test_worker_killed_while_sending(make_stack: Any, resend: bool) -> None:
    stack: Stack = make_stack(MESSAGE_QUEUE_RESEND_UNCERTAIN=str(resend).lower())
    instance, ids = kill_during_first_send(stack, 3)
    stack.start_worker()

    if resend:
        stack.wait_completed(ids, timeout=60)
        assert [s["zaap_id"] for s in stack.sends(instance)] == ids
        assert stack.job(ids[0])["attempts"] == 2
    else:
        stack.wait_completed(ids[1:], timeout=60)
        assert [s["zaap_id"] for s in stack.sends(instance)] == ids[1:]
        job = stack.job(ids[0])
        assert job["status"] == "discarded" and "MESSAGE_QUEUE_RESEND_UNCERTAIN=false" in job["last_error"]
    rescue = [e for e in stack.history(ids[0]) if e["from_status"] == "sending" and e["to_status"] != "completed"]
    assert len(rescue) == 1 and rescue[0]["detail"].startswith("uncertain: worker")
    assert rescue[0]["to_status"] == ("retryable" if resend else "discarded")


def test_worker_killed_waiting_for_the_answer_sends_again_after_the_first_copy(make_stack: Any) -> None:
    """Killed after the frame left, while waiting for WhatsApp's answer: the documented resend.
    The contact sees the message twice, one copy after the other, and then the rest in order."""
    stack: Stack = make_stack()
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=3000)
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(3)]
    wait_until(lambda: stack.sends(instance), 30, "the first frame")
    kill_worker_of(stack, ids[0])
    stack.simulate(instance, latencyMs=0)
    stack.start_worker()
    stack.wait_completed(ids, timeout=60)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [ids[0], *ids]


def test_worker_killed_while_typing_sends_exactly_once(stack: Stack) -> None:
    instance = stack.create_instance()
    typed = stack.send_text(instance, "typed", delayTyping=3)["zaapId"]
    after = stack.send_text(instance, "after")["zaapId"]
    stack.wait_status(typed, "typing")
    kill_worker_of(stack, typed)
    stack.start_worker()
    stack.wait_completed([typed, after], timeout=60)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [typed, after]


def test_sigterm_lets_the_send_in_progress_finish(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=2000)
    sending = stack.send_text(instance, "in flight")["zaapId"]
    waiting = stack.send_text(instance, "next")["zaapId"]
    stack.wait_status(sending, "sending")
    assert stack.stop_process(stack.workers[0], signal.SIGTERM) == 0
    job = stack.job(sending)
    assert job["status"] == "completed" and job["whatsapp_message_id"]
    assert stack.all("SELECT zaap_id FROM messages WHERE status IN ('running', 'sending')") == []
    # The next head is waiting in the broker for whichever worker comes next.
    assert stack.job(waiting)["status"] == "scheduled"
    stack.simulate(instance, latencyMs=0)
    stack.start_worker()
    stack.wait_completed([waiting], timeout=30)


def test_two_maintenance_loops_rescue_once(make_stack: Any) -> None:
    stack: Stack = make_stack(workers=3, MESSAGE_QUEUE_MAINTENANCE_INTERVAL="200ms")
    instance, ids = kill_during_first_send(stack, 2)
    stack.wait_completed(ids, timeout=60)
    history = stack.history(ids[0])
    assert [e["to_status"] for e in history].count("retryable") == 1, history
    assert [s["zaap_id"] for s in stack.sends(instance)] == ids


def test_slow_live_worker_is_never_rescued(make_stack: Any) -> None:
    """A live worker's message is never rescued, however long it has been in flight: only a dead
    heartbeat counts. No one call may outlast the TTL (the job timeout is below it), but the
    message was first claimed a `delayTyping` before its send, and the send is slow: while it is
    being sent, it has been in flight (`started_at`) for longer than the TTL. A rescuer that went
    by age instead of by heartbeat would take it from its worker and send it twice."""
    ttl = 5.0
    stack: Stack = make_stack(MESSAGE_QUEUE_HEARTBEAT_TTL=f"{ttl:g}s", MESSAGE_QUEUE_JOB_TIMEOUT="4s",
                              MESSAGE_QUEUE_MAINTENANCE_INTERVAL="200ms")
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=3500)  # slow, but within the job timeout
    slow = stack.send_text(instance, "slow", delayTyping=int(ttl) + 1)["zaapId"]

    def sending_for_longer_than_the_ttl() -> bool:
        row = stack.one("SELECT status, extract(epoch FROM now() - started_at) AS age FROM messages"
                        " WHERE zaap_id = %s", (slow,))
        assert row["status"] in ("scheduled", "running", "typing", "sending"), row
        # A second past the TTL: five maintenance rounds in which an age-keyed rescuer would act.
        return row["status"] == "sending" and row["age"] > ttl + 1

    wait_until(sending_for_longer_than_the_ttl, 30, "the message to be sending, in flight longer than the TTL",
               interval=0.02)
    assert stack.workers[0].poll() is None, "its worker is alive"

    def sent() -> bool:
        status = stack.job(slow)["status"]
        assert status in ("sending", "completed"), f"taken from its live worker: {stack.history(slow)}"
        return status == "completed"

    wait_until(sent, 30, "the slow send to complete", interval=0.02)
    assert [e["to_status"] for e in stack.history(slow)] == ["scheduled", "running", "typing", "sending", "completed"]
    assert len({e["worker_id"] for e in stack.history(slow) if e["to_status"] in ("running", "sending")}) == 1
    assert [s["zaap_id"] for s in stack.sends(instance)] == [slow]
    assert stack.job(slow)["attempts"] == 1


def test_nothing_is_lost_when_the_only_worker_is_killed_repeatedly(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=300)
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(6)]
    def sent_by_a_live_worker() -> str | None:
        for zaap_id in ids:
            job = stack.job(zaap_id)
            if job["status"] == "sending" and stack.worker_process(job["worker_id"]).poll() is None:
                return zaap_id
        return None

    for _ in range(2):
        kill_worker_of(stack, wait_until(sent_by_a_live_worker, 30, "a message being sent"))
        stack.start_worker()
    stack.wait_completed(ids, timeout=90)
    sent = [s["zaap_id"] for s in stack.sends(instance)]
    # At-least-once: a message killed mid-send may have reached WhatsApp and be sent again,
    # but never out of order and never skipped.
    assert [z for i, z in enumerate(sent) if z not in sent[:i]] == ids


def test_message_left_running_by_a_live_worker_is_rescued(make_stack: Any) -> None:
    """A claim that committed but whose answer was lost: the live worker skipped the broker
    message, which is gone, and nobody will finish the message unless the rescuer does."""
    stack: Stack = make_stack(MESSAGE_QUEUE_MAINTENANCE_INTERVAL="200ms")
    instance = stack.create_instance()
    stranded = stack.send_text(instance, "stranded", delayMessage=3)["zaapId"]
    after = stack.send_text(instance, "after")["zaapId"]
    worker_id = stack.one("SELECT worker_id FROM dramatiq.worker LIMIT 1")["worker_id"]
    job = stack.job(stranded)
    claimed = stack.all("SELECT zaap_id FROM wmq_claim(%s, %s, %s)", (stranded, job["dispatch_id"], worker_id))
    assert len(claimed) == 1
    stack.all("DELETE FROM dramatiq.queue WHERE message_id = %s RETURNING 1", (job["dispatch_id"],))
    stack.wait_completed([stranded, after], timeout=30)
    assert any("gave up recording it" in (e["detail"] or "") for e in stack.history(stranded))
    assert [s["zaap_id"] for s in stack.sends(instance)] == [stranded, after]


def test_connections_dropped_by_the_database_lose_nothing(stack: Stack) -> None:
    """What a database restart does to the service's processes: every connection (pools, the
    broker's LISTEN) is cut, several times while messages flow. Nothing is lost, nothing is sent
    twice, order holds, and the processes carry on without a restart of their own."""
    instances = [stack.create_instance() for _ in range(2)]
    for instance in instances:
        stack.simulate(instance, latencyMs=40)
    ids = {i["id"]: [stack.send_text(i, f"m{n}")["zaapId"] for n in range(12)] for i in instances}
    every = [z for zs in ids.values() for z in zs]

    def completed() -> int:
        return int(stack.one("SELECT count(*) AS n FROM messages WHERE status = 'completed'")["n"])

    cut = 0
    for _ in range(4):
        before = completed()
        wait_until(lambda b=before: completed() >= min(b + 3, len(every)), 30, "progress since the last cut")  # type: ignore[misc]
        cut += len(stack.all("""
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name LIKE 'wmq%'"""))
    stack.wait_completed(every, timeout=90)
    assert cut >= 8, "the cuts must have hit the API's and the worker's connections"
    for instance in instances:
        assert [s["zaap_id"] for s in stack.sends(instance)] == ids[instance["id"]]
    assert stack.workers[0].poll() is None and stack.api is not None and stack.api.poll() is None
    reply = stack.send_text(instances[0], "after the cuts")["zaapId"]
    stack.wait_completed([reply], timeout=30)
