"""An outage is not a death (issue 11): who may judge a worker dead, a claim asked twice, a
completion that comes after a rescue the worker did not deserve, and a broker row of a message in
flight that a skip must not delete."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

from dramatiq import Message
from dramatiq.broker import MessageProxy

from service.core import transitions
from service.core.context import Core
from tests.fast.helpers import (
    broker_row,
    claim,
    enqueue,
    events,
    execute,
    instance,
    lead,
    live_broker_row,
    message,
    now,
    worker,
)
from workers.broker import SETTLED, QueueBroker, SettledAck, put_back
from workers.liveness import Heartbeat
from workers.maintenance import rescuer


def rescue(core: Core, *, judge: bool) -> int | None:
    return lead(core, lambda c, conn: rescuer.run(c, conn, judge=judge))  # type: ignore[misc]


def test_a_stale_heartbeat_is_no_death_to_a_judge_that_was_away(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    claim(core, zaap, worker(core, alive=False))
    assert rescue(core, judge=False) == 0
    assert message(core, zaap)["status"] == "sending"
    assert rescue(core, judge=True) == 1
    assert message(core, zaap)["status"] == "retryable"


def test_a_lost_claim_answer_asked_again_by_the_same_worker_gets_the_same_grant(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    holder = worker(core)
    first = claim(core, zaap, holder)
    again = claim(core, zaap, holder)
    assert first is not None and again == first and again.granted == "send"
    assert message(core, zaap)["attempts"] == 1  # asking again counts no attempt


def test_another_worker_learns_the_dispatch_is_in_flight(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    claim(core, zaap, worker(core))
    other = claim(core, zaap, worker(core))
    assert other is not None and other.granted == "busy"
    assert message(core, zaap)["status"] == "sending"


def test_the_completion_of_a_worker_taken_for_dead_is_accepted_and_withdraws_the_rescue(core: Core) -> None:
    inst = instance(core)
    zaap, second = enqueue(core, inst), enqueue(core, inst)
    holder = worker(core, alive=False)  # stood still (or the database was away) past the TTL
    claim(core, zaap, holder)
    assert rescue(core, judge=True) == 1
    rescue_dispatch = message(core, zaap)["dispatch_id"]
    assert broker_row(core, rescue_dispatch) is not None

    assert transitions.complete(core, zaap, holder, "WA-1")
    row = message(core, zaap)
    assert (row["status"], row["whatsapp_message_id"]) == ("completed", "WA-1")
    assert broker_row(core, rescue_dispatch) is None  # the resend is withdrawn
    assert "its retry is withdrawn" in (events(core, zaap)[-1][2] or "")
    assert live_broker_row(core, second) is not None  # and the next one goes


def test_a_completion_is_refused_once_another_worker_took_the_rescued_message(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    holder = worker(core, alive=False)
    claim(core, zaap, holder)
    rescue(core, judge=True)
    assert claim(core, zaap, worker(core)) is not None
    assert not transitions.complete(core, zaap, holder, "WA-1")
    assert message(core, zaap)["status"] == "sending"


def test_a_message_whose_typing_kills_its_worker_is_discarded_after_the_attempt_limit(core: Core) -> None:
    zaap = enqueue(core, instance(core), typing_ms=1000, max_attempts=2)
    for expected in ("scheduled", "discarded"):
        claimed = claim(core, zaap, worker(core, alive=False))
        assert claimed is not None and claimed.granted == "typing"
        assert rescue(core, judge=True) == 1
        assert message(core, zaap)["status"] == expected
    assert message(core, zaap)["attempts"] == 2


def test_a_skipped_broker_message_of_a_message_in_flight_is_put_back_not_deleted(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    dispatch = message(core, zaap)["dispatch_id"]
    execute(core, "UPDATE dramatiq.queue SET state = 'consumed', worker_id = %(w)s WHERE message_id = %(id)s",
            w=uuid4(), id=dispatch)
    broker = QueueBroker(pool=core.pool, results=False, middleware=[], heartbeat_ttl=60.0)
    consumer = broker.consume("whatsapp")
    body: Message[Any] = Message(queue_name="whatsapp", actor_name="deliver", args=(zaap, 1), kwargs={}, options={},
                                 message_id=str(dispatch), message_timestamp=0)
    sent = MessageProxy(body)  # as the worker hands it to the middleware and the ack
    put_back(sent)
    consumer.ack(sent)
    row = broker_row(core, dispatch)
    assert row is not None and row["state"] == "queued" and row["worker_id"] is None
    assert (row["available_at"] - now(core)).total_seconds() > 50  # after the TTL
    plain = MessageProxy(body)
    execute(core, "UPDATE dramatiq.queue SET state = 'consumed' WHERE message_id = %(id)s", id=dispatch)
    consumer.ack(plain)
    assert broker_row(core, dispatch) is None  # a stale one is deleted as before


def test_a_message_whose_actor_returned_settled_is_acked_without_a_statement(core: Core) -> None:
    """The core deleted the broker row with the send; the actor says so by what it returns, and
    the ack reads it (no thread-local between them). A row still there is left alone."""
    zaap = enqueue(core, instance(core))
    dispatch = message(core, zaap)["dispatch_id"]
    execute(core, "UPDATE dramatiq.queue SET state = 'consumed' WHERE message_id = %(id)s", id=dispatch)
    broker = QueueBroker(pool=core.pool, results=False, middleware=[], heartbeat_ttl=60.0)
    consumer = broker.consume("whatsapp")
    body: Message[Any] = Message(queue_name="whatsapp", actor_name="deliver", args=(zaap, 1), kwargs={}, options={},
                                 message_id=str(dispatch), message_timestamp=0)
    settled, plain = MessageProxy(body), MessageProxy(body)
    SettledAck().after_process_message(broker, settled, result=SETTLED)
    SettledAck().after_process_message(broker, plain, result=None)
    consumer.ack(settled)
    assert broker_row(core, dispatch) is not None, "a settled message's ack runs no statement"
    consumer.ack(plain)
    assert broker_row(core, dispatch) is None


def test_the_heartbeat_judges_only_after_continuous_access_for_the_ttl(database_url: str) -> None:
    heartbeat = Heartbeat(database_url, uuid4(), interval=0.1, ttl=0.5)
    try:
        assert heartbeat.beat() and not heartbeat.may_judge()
        deadline = time.monotonic() + 5
        while not heartbeat.may_judge():
            assert time.monotonic() < deadline, "never may judge"
            assert heartbeat.beat()
            time.sleep(0.05)
        # The database goes away: no judging until it has been back for the TTL.
        heartbeat.database_url, url = "host=/nonexistent dbname=none", heartbeat.database_url
        heartbeat._conn.close()  # type: ignore[union-attr]
        assert not heartbeat.beat() and not heartbeat.may_judge()
        heartbeat.database_url = url
        assert heartbeat.beat() and not heartbeat.may_judge()
        # The process stood still (SIGSTOP, a VM pause) longer than two beats: the same.
        while not heartbeat.may_judge():
            assert heartbeat.beat()
            time.sleep(0.05)
        time.sleep(0.8)  # more than two beats and a retry (0.7 s here)
        assert not heartbeat.may_judge()
        assert heartbeat.beat() and not heartbeat.may_judge()
    finally:
        if heartbeat._conn is not None:
            heartbeat._conn.close()
