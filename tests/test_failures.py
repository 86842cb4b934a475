"""Issue 4 on live processes: retries that keep the head, discards, snooze while disconnected,
reconnect, cancel while typing or sending, retention and lost dispatches."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any

from tests.stack import Stack, wait_until


def test_retry_blocks_successors_until_it_succeeds(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, failNext=2)
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(3)]
    stack.wait_completed(ids, timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == ids
    first = stack.job(ids[0])
    assert first["attempts"] == 3 and "simulated send failure" in first["last_error"]
    assert [e["to_status"] for e in stack.history(ids[0])].count("retryable") == 2
    # The successors were not even claimed before the head went out.
    head_sent = stack.job(ids[0])["sent_at"]
    assert all(stack.job(z)["started_at"] >= head_sent for z in ids[1:])
    assert [stack.job(z)["attempts"] for z in ids[1:]] == [1, 1]


def test_message_failing_every_attempt_is_discarded_and_the_next_goes(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, failNext=3)
    doomed = stack.send_text(instance, "doomed")["zaapId"]
    after = stack.send_text(instance, "after")["zaapId"]
    stack.wait_completed([after], timeout=30)
    job = stack.job(doomed)
    assert (job["status"], job["attempts"]) == ("discarded", 3)
    failed = stack.all("SELECT * FROM v_recent_failed_jobs WHERE zaap_id = %s", (doomed,))
    assert failed and failed[0]["last_error"].endswith("simulated send failure")
    assert [s["zaap_id"] for s in stack.sends(instance)] == [after]
    api = stack.http.get(f"{stack.base(instance)}/queue/{doomed}").json()
    assert api["status"] == "discarded" and api["lastError"]


def test_permanent_error_discards_at_once(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, failNext=1, failMode="permanent")
    invalid = stack.send_text(instance, "to nowhere")["zaapId"]
    after = stack.send_text(instance, "after")["zaapId"]
    stack.wait_completed([after], timeout=30)
    job = stack.job(invalid)
    assert (job["status"], job["attempts"]) == ("discarded", 1)
    assert "not on WhatsApp" in job["last_error"]


def test_disconnected_instance_waits_and_resumes_in_order_on_reconnect(make_stack: Any) -> None:
    # A 30 s re-check: only the reconnect event can make the messages go within the deadline.
    stack: Stack = make_stack(MESSAGE_QUEUE_DISCONNECT_RETRY_DELAY="30s")
    offline, online = stack.create_instance(), stack.create_instance()
    stack.simulate(offline, connected=False)
    waiting = [stack.send_text(offline, f"w{n}", delayMessage=1)["zaapId"] for n in range(3)]
    flowing = [stack.send_text(online, f"f{n}")["zaapId"] for n in range(2)]
    stack.wait_completed(flowing, timeout=30)

    wait_until(lambda: any(e["detail"] and "disconnected" in e["detail"] for e in stack.history(waiting[0])),
               30, "the head to be snoozed")
    assert [stack.job(z)["attempts"] for z in waiting] == [0, 0, 0]
    assert {stack.job(z)["status"] for z in waiting} == {"scheduled"}
    assert stack.sends(offline) == []
    assert stack.one("SELECT connection_state FROM instances WHERE id = %s", (offline["id"],)) == {
        "connection_state": "disconnected"}

    stack.simulate(offline, connected=True)
    stack.wait_completed(waiting, timeout=15)
    sends = stack.sends(offline)
    assert [s["zaap_id"] for s in sends] == waiting
    for earlier, later in pairwise(sends):
        assert later["started_at"] - earlier["ended_at"] >= timedelta(seconds=1), "a burst after reconnect"


def test_cancel_while_typing_stops_the_send_and_ends_the_presence(stack: Stack) -> None:
    instance = stack.create_instance()
    typed = stack.send_text(instance, "never", delayTyping=5)["zaapId"]
    after = stack.send_text(instance, "after")["zaapId"]
    stack.wait_status(typed, "typing")
    response = stack.http.delete(f"{stack.base(instance)}/queue/{typed}")
    assert response.status_code == 200 and response.json()["previousStatus"] == "typing"
    stack.wait_completed([after], timeout=30)
    wait_until(lambda: len(stack.events(instance)) == 3, 10, "the paused presence")
    events = stack.events(instance)
    # The next message may reach WhatsApp before or after the `paused` (both end the typing).
    assert [e["presence"] for e in events if e["kind"] == "presence"] == ["composing", "paused"]
    assert [e["zaap_id"] for e in events if e["kind"] == "send"] == [after]
    assert stack.job(typed)["status"] == "cancelled"


def test_cancel_while_sending_is_refused(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=2000)
    sending = stack.send_text(instance, "on its way")["zaapId"]
    stack.wait_status(sending, "sending")
    response = stack.http.delete(f"{stack.base(instance)}/queue/{sending}")
    assert response.status_code == 409 and "sending" in response.json()["error"]
    stack.wait_completed([sending], timeout=30)


def test_head_whose_dispatch_was_lost_is_dispatched_again(stack: Stack) -> None:
    instance = stack.create_instance()
    lost = stack.send_text(instance, "lost", delayMessage=1)["zaapId"]
    deleted = stack.all("DELETE FROM dramatiq.queue RETURNING message_id")
    assert len(deleted) == 1
    stack.wait_completed([lost], timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [lost]


def test_finished_messages_are_purged_after_the_retention_period(make_stack: Any) -> None:
    stack: Stack = make_stack(MESSAGE_QUEUE_RETENTION_PERIOD="1s")
    instance = stack.create_instance()
    done = stack.send_text(instance, "done")["zaapId"]
    pending = stack.send_text(instance, "pending", delayMessage=3600)["zaapId"]
    stack.wait_completed([done], timeout=30)
    wait_until(lambda: not stack.all("SELECT 1 FROM messages WHERE zaap_id = %s", (done,)), 30, "the purge")
    assert stack.history(done) == []
    assert stack.job(pending)["status"] == "scheduled"
