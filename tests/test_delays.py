"""Promises 3 and 4: chained delays, unlimited delays that survive restarts, typing without a
held thread."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any
from uuid import UUID

from service.core.models import MessageRequest
from tests.stack import Stack, wait_until


def test_delay_message_spaces_sends(stack: Stack) -> None:
    instance = stack.create_instance()
    ids = [stack.send_text(instance, f"m{n}", delayMessage=d)["zaapId"] for n, d in enumerate([0, 2, 2])]
    stack.wait_completed(ids, timeout=30)
    sends = stack.sends(instance)
    assert [s["zaap_id"] for s in sends] == ids
    for earlier, later in pairwise(sends):
        assert later["started_at"] - earlier["started_at"] >= timedelta(seconds=2)


def test_long_delay_is_not_overtaken_by_a_later_short_one(stack: Stack) -> None:
    instance = stack.create_instance()
    slow = stack.send_text(instance, "slow", delayMessage=3)
    quick = stack.send_text(instance, "quick", delayMessage=0)
    assert quick["scheduledFor"] >= slow["scheduledFor"]
    stack.wait_completed([slow["zaapId"], quick["zaapId"]], timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [slow["zaapId"], quick["zaapId"]]


def broker_row(stack: Stack, zaap_id: str) -> dict[str, Any]:
    return stack.one(
        "SELECT q.state::text AS state, q.available_at, q.consumed_at, q.available_at > now() + interval '23 hours'"
        " AS far FROM dramatiq.queue q JOIN messages m ON q.message_id = m.dispatch_id WHERE m.zaap_id = %s",
        (zaap_id,),
    )


def test_one_day_delay_waits_in_the_broker_and_survives_a_restart(stack: Stack) -> None:
    waiting = stack.create_instance()
    later = stack.send_text(waiting, "tomorrow", delayMessage=86400)
    assert later["status"] == "scheduled"
    row = broker_row(stack, later["zaapId"])
    assert row["state"] == "queued" and row["far"] and row["consumed_at"] is None

    # A full restart: API and worker stopped, new ones started on the same database.
    stack.stop_process(stack.workers[0])
    stack.stop_process(stack.api)  # type: ignore[arg-type]
    stack.start_api()
    stack.start_worker()

    other = stack.create_instance()
    now = stack.send_text(other, "now")
    stack.wait_completed([now["zaapId"]], timeout=30)

    job = stack.http.get(f"{stack.base(waiting)}/queue/{later['zaapId']}").json()
    assert job["status"] == "scheduled" and job["position"] == 1
    row = broker_row(stack, later["zaapId"])
    assert row["state"] == "queued" and row["far"] and row["consumed_at"] is None
    assert stack.sends(waiting) == []


def test_typing_is_shown_before_each_send_without_holding_the_thread(make_stack: Any) -> None:
    stack: Stack = make_stack(MESSAGE_QUEUE_WORKER_THREADS=1)
    instances = [stack.create_instance() for _ in range(10)]
    ids = [stack.send_text(i, "typed", delayTyping=2)["zaapId"] for i in instances]
    stack.wait_completed(ids, timeout=60)

    everything = sorted(
        (e for i in instances for e in stack.events(i)), key=lambda e: e["id"]
    )
    first_send = next(e for e in everything if e["kind"] == "send")
    composing_before_first_send = {
        e["instance_id"] for e in everything if e["presence"] == "composing" and e["id"] < first_send["id"]
    }
    # One thread: had it slept through the typing, no other instance could have started typing.
    assert len(composing_before_first_send) == 10

    for instance in instances:
        events = stack.events(instance)
        assert [(e["kind"], e["presence"]) for e in events] == [
            ("presence", "composing"), ("send", None), ("presence", "paused"),
        ]
        assert events[1]["started_at"] - events[0]["ended_at"] >= timedelta(seconds=2)


def test_audio_shows_recording(stack: Stack) -> None:
    """The presence follows the message type (no audio route yet: enqueued through the core)."""
    instance = stack.create_instance()
    request = MessageRequest(phone="5511999999999", message_type="audio",
                             payload={"audio": "https://example.invalid/a.ogg"}, delay_typing_ms=100)
    with stack.core() as core:
        zaap_id = stack.enqueue(core, UUID(instance["id"]), request).zaap_id
    stack.wait_completed([zaap_id], timeout=30)
    assert [e["presence"] for e in stack.events(instance)] == ["recording", None, "paused"]


def test_pacing_holds_after_a_backlog(stack: Stack) -> None:
    """Messages due long ago still go out spaced by their delay, not in a burst."""
    instance = stack.create_instance()
    stack.http.post(f"{stack.base(instance)}/pause")
    ids = [stack.send_text(instance, f"m{n}", delayMessage=1)["zaapId"] for n in range(3)]
    wait_until(lambda: stack.one("SELECT max(scheduled_at) < now() AS due FROM messages")["due"], 10, "all due")
    stack.http.post(f"{stack.base(instance)}/resume")
    stack.wait_completed(ids, timeout=30)
    sends = stack.sends(instance)
    for earlier, later in pairwise(sends):
        assert later["started_at"] - earlier["ended_at"] >= timedelta(seconds=1)


def test_due_time_waker_notifies_the_queue_when_a_delayed_message_falls_due(stack: Stack) -> None:
    import psycopg

    instance = stack.create_instance()
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute('LISTEN "dramatiq.whatsapp.enqueue"')
        zaap_id = stack.send_text(instance, "later", delayMessage=2)["zaapId"]
        due = stack.job(zaap_id)["available_at"]
        notified = list(conn.notifies(timeout=15, stop_after=1))
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    assert notified, "nobody woke the queue when the message fell due"
    assert at >= due
    stack.wait_completed([zaap_id], timeout=30)


def test_the_send_is_recorded_before_the_typing_ends(stack: Stack) -> None:
    """Completion first, presence after: the `paused` that ends "typing…" comes once the send is
    recorded (and the next head dispatched), not between the send and its record."""
    instance = stack.create_instance()
    zaap_id = stack.send_text(instance, "x", delayTyping=0.2)["zaapId"]
    stack.wait_completed([zaap_id], timeout=30)
    paused = wait_until(lambda: [e for e in stack.events(instance) if e["presence"] == "paused"], 10, "paused")
    assert paused[0]["started_at"] >= stack.job(zaap_id)["finished_at"]
