"""The state machine (service/sql/functions/30_dispatch.sql, 40_transitions.sql, 50_control.sql), one
promise per test, called directly: no API, no worker. The broker is only its table: a dispatch
is a row of dramatiq.queue, and a claim names the dispatch id the consumed broker message carried."""

from __future__ import annotations

import re
from datetime import timedelta
from uuid import uuid4

import psycopg
import pytest

from service.core import control, queries, transitions
from service.core.context import Core
from service.core.errors import CancelRefused
from tests.fast.helpers import (
    PHONE,
    broker_due,
    broker_row,
    claim,
    enqueue,
    events,
    execute,
    instance,
    live_broker_row,
    message,
    now,
    one,
    redispatch,
    sql,
    worker,
)

# --- the claim (I3, I4) -----------------------------------------------------------------------


def test_only_the_head_can_be_claimed_even_with_its_dispatch_id(core: Core) -> None:
    inst = instance(core)
    head, second = enqueue(core, inst), enqueue(core, inst)
    assert message(core, second)["dispatch_id"] is None  # only the head is in the broker
    forced = redispatch(core, second)  # a dispatch that should not exist

    assert transitions.claim(core, second, forced, worker(core)) is None
    assert message(core, second)["status"] == "scheduled"
    assert claim(core, head, worker(core)) is not None


def test_a_stale_dispatch_id_claims_nothing(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    stale = message(core, zaap)["dispatch_id"]
    live = redispatch(core, zaap)

    assert live != stale and broker_row(core, stale) is None  # the old broker row is withdrawn
    assert transitions.claim(core, zaap, stale, worker(core)) is None
    assert message(core, zaap)["status"] == "scheduled"
    assert transitions.claim(core, zaap, live, worker(core)) is not None


def test_one_instance_cannot_have_two_messages_in_flight(core: Core) -> None:
    inst = instance(core)
    head, second = enqueue(core, inst), enqueue(core, inst)
    assert claim(core, head, worker(core)) is not None

    with pytest.raises(psycopg.errors.UniqueViolation, match="messages_one_in_flight"):
        execute(core, "UPDATE messages SET status = 'sending' WHERE zaap_id = %(zaap)s", zaap=second)


def test_the_claim_grants_the_send_at_once_without_delay_typing(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    me = worker(core)

    claimed = claim(core, zaap, me)

    assert claimed is not None and claimed.granted == "send" and claimed.attempts == 1
    row = message(core, zaap)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("sending", 1, me)


def test_with_delay_typing_the_claim_grants_typing_then_the_send_after_the_delay(core: Core) -> None:
    zaap = enqueue(core, instance(core), typing_ms=1500)
    me = worker(core)

    claimed = claim(core, zaap, me)
    assert claimed is not None and claimed.granted == "typing"
    assert (message(core, zaap)["status"], message(core, zaap)["attempts"]) == ("running", 0)

    before = now(core)
    assert transitions.start_typing(core, zaap, me)
    row = message(core, zaap)
    assert (row["status"], row["phase"]) == ("typing", 2)
    assert row["available_at"] >= before + timedelta(milliseconds=1500)
    assert broker_due(core, zaap) == row["available_at"]

    claimed = claim(core, zaap, me)
    assert claimed is not None and claimed.granted == "send"
    assert (message(core, zaap)["status"], message(core, zaap)["attempts"]) == ("sending", 1)


# --- completion and pacing --------------------------------------------------------------------


@pytest.mark.parametrize(("delay_ms", "interval_ms"), [(3000, 1000), (1000, 3000)],
                         ids=["the-delay-is-longer", "the-min-send-interval-is-longer"])
def test_complete_settles_its_broker_row_and_paces_the_next_head_from_the_send(
        core: Core, delay_ms: int, interval_ms: int) -> None:
    inst = instance(core, min_send_interval_ms=interval_ms)
    first, second = enqueue(core, inst), enqueue(core, inst, delay_ms=delay_ms)
    me = worker(core)
    assert claim(core, first, me) is not None
    dispatch = message(core, first)["dispatch_id"]

    assert transitions.complete(core, first, me, "WA1")

    row = message(core, first)
    assert (row["status"], row["whatsapp_message_id"]) == ("completed", "WA1")
    assert broker_row(core, dispatch) is None
    last_sent = one(core, "SELECT last_sent_at FROM instance_queues WHERE instance_id = %(i)s", i=inst)
    assert last_sent is not None and last_sent["last_sent_at"] == row["sent_at"]
    # Neither the next message's delay nor the instance's minimum spacing is cut short.
    due = last_sent["last_sent_at"] + timedelta(milliseconds=max(delay_ms, interval_ms))
    assert message(core, second)["available_at"] >= due
    assert broker_due(core, second) >= due


def test_complete_is_refused_to_a_worker_that_does_not_hold_the_message(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    assert claim(core, zaap, worker(core)) is not None
    assert not transitions.complete(core, zaap, worker(core), "WA1")
    assert message(core, zaap)["status"] == "sending"


# --- pause and resume -------------------------------------------------------------------------


def test_a_paused_instance_head_is_not_claimable_and_resume_dispatches_it(core: Core) -> None:
    inst = instance(core)
    zaap = enqueue(core, inst)
    dispatch = message(core, zaap)["dispatch_id"]

    control.set_paused(core, inst, True)
    assert broker_row(core, dispatch) is None  # withdrawn
    assert transitions.claim(core, zaap, dispatch, worker(core)) is None  # its own dispatch id, yet paused

    control.set_paused(core, inst, False)
    assert message(core, zaap)["dispatch_id"] != dispatch
    assert live_broker_row(core, zaap) is not None
    claimed = claim(core, zaap, worker(core))
    assert claimed is not None and claimed.granted == "send"


# --- failures ---------------------------------------------------------------------------------


def test_a_retryable_failure_stays_head_and_comes_back_after_the_backoff(core: Core) -> None:
    inst = instance(core)
    zaap, second = enqueue(core, inst), enqueue(core, inst)
    me = worker(core)
    assert claim(core, zaap, me) is not None

    before = now(core)
    assert transitions.fail(core, zaap, me, "timeout", permanent=False, backoff=5) == "retryable"

    row = message(core, zaap)
    assert (row["status"], row["attempts"], row["last_error"]) == ("retryable", 1, "timeout")
    assert row["available_at"] >= before + timedelta(seconds=5)
    assert live_broker_row(core, zaap) is not None
    assert message(core, second)["dispatch_id"] is None  # still waiting behind the head
    assert claim(core, zaap, me) is not None  # and the retry claims it


def test_the_last_allowed_attempt_discards_and_lets_the_next_go(core: Core) -> None:
    inst = instance(core)
    zaap, second = enqueue(core, inst, max_attempts=2), enqueue(core, inst)
    me = worker(core)
    for expected in ("retryable", "discarded"):
        assert claim(core, zaap, me) is not None
        assert transitions.fail(core, zaap, me, "timeout", permanent=False, backoff=0) == expected

    row = message(core, zaap)
    assert (row["status"], row["attempts"]) == ("discarded", 2) and row["finished_at"] is not None
    assert live_broker_row(core, second) is not None


def test_a_permanent_failure_discards_at_once(core: Core) -> None:
    inst = instance(core)
    zaap, second = enqueue(core, inst, max_attempts=3), enqueue(core, inst)
    me = worker(core)
    assert claim(core, zaap, me) is not None

    assert transitions.fail(core, zaap, me, "invalid number", permanent=True, backoff=5) == "discarded"

    assert (message(core, zaap)["status"], message(core, zaap)["attempts"]) == ("discarded", 1)
    assert live_broker_row(core, second) is not None


def test_snooze_gives_the_attempt_back_and_looks_again_after_the_delay(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    me = worker(core)
    assert claim(core, zaap, me) is not None
    assert message(core, zaap)["attempts"] == 1

    before = now(core)
    assert transitions.snooze(core, zaap, me, 30, "not connected")

    row = message(core, zaap)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("scheduled", 0, None)
    assert row["available_at"] >= before + timedelta(seconds=30)
    assert broker_due(core, zaap) == row["available_at"]


# --- cancel -----------------------------------------------------------------------------------


def test_cancelling_a_typing_message_withdraws_its_send_ends_the_presence_and_lets_the_next_go(core: Core) -> None:
    inst = instance(core)
    zaap, second = enqueue(core, inst, typing_ms=60_000), enqueue(core, inst)
    me = worker(core)
    assert claim(core, zaap, me) is not None and transitions.start_typing(core, zaap, me)
    phase2 = message(core, zaap)["dispatch_id"]

    assert control.cancel(core, zaap) == "typing"

    assert message(core, zaap)["status"] == "cancelled"
    assert broker_row(core, phase2) is None
    presences = sql(core, "SELECT message FROM dramatiq.queue WHERE message->>'actor_name' = 'presence'")
    assert [p["message"]["args"] for p in presences] == [[str(inst), PHONE, "paused"]]
    assert live_broker_row(core, second) is not None


def test_a_message_being_sent_cannot_be_cancelled(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    assert claim(core, zaap, worker(core)) is not None

    refused = one(core, "SELECT * FROM wmq_cancel(%(zaap)s, 'whatsapp', 'deliver', 'presence')", zaap=zaap)

    assert refused == {"previous_status": "sending", "cancelled": False}
    assert message(core, zaap)["status"] == "sending"
    with pytest.raises(CancelRefused):
        control.cancel(core, zaap)


# --- history (I6) -----------------------------------------------------------------------------


def test_every_status_change_is_recorded_with_its_reason(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    me = worker(core)
    claim(core, zaap, me)
    transitions.fail(core, zaap, me, "timeout talking to WhatsApp", permanent=False, backoff=0)
    claim(core, zaap, me)
    transitions.snooze(core, zaap, me, 0, "instance not connected")
    claim(core, zaap, me)
    transitions.complete(core, zaap, me, "WA7")

    assert events(core, zaap) == [
        (None, "scheduled", None),
        ("scheduled", "sending", None),
        ("sending", "retryable", "timeout talking to WhatsApp"),
        ("retryable", "sending", None),
        ("sending", "scheduled", "instance not connected"),
        ("scheduled", "sending", None),
        ("sending", "completed", "whatsapp id WA7"),
    ]
    recorded = sql(core, "SELECT worker_id FROM message_events WHERE zaap_id = %(z)s AND to_status = 'completed'",
                   z=zaap)
    assert recorded == [{"worker_id": me}]


def test_the_typing_path_and_a_cancel_are_recorded_too(core: Core) -> None:
    zaap = enqueue(core, instance(core), typing_ms=10)
    me = worker(core)
    claim(core, zaap, me)
    transitions.start_typing(core, zaap, me)
    control.cancel(core, zaap)

    assert events(core, zaap) == [
        (None, "scheduled", None),
        ("scheduled", "running", None),
        ("running", "typing", None),
        ("typing", "cancelled", "cancelled by request"),
    ]


# --- routing (service/sql/functions/20_routing.sql) ---------------------------------------------------


def test_a_session_bound_instance_is_dispatched_to_the_sessions_queue(core: Core) -> None:
    on_whatsapp, simulated = instance(core, transport="neonize"), instance(core, transport="simulator")
    for inst, queue in ((on_whatsapp, "whatsapp-sessions"), (simulated, "whatsapp")):
        row = live_broker_row(core, enqueue(core, inst))
        assert row is not None and row["queue_name"] == queue and row["message"]["queue_name"] == queue

    assert sql(core, "SELECT * FROM wmq_queues('whatsapp')") == [
        {"queue_name": "whatsapp", "session_bound": False},
        {"queue_name": "whatsapp-sessions", "session_bound": True},
    ]


def test_the_claim_and_the_webhook_claim_read_their_rows_by_key(core: Core) -> None:
    """Both statements join a set-returning function to a table; told it returns one row, the
    planner reads that table by key instead of scanning it (a scan per message grew the claim's
    cost with the messages kept: bench/paced.py)."""
    target = instance(core)
    execute(core, """SELECT wmq_enqueue(md5(random()::text || n), %(i)s, 'text', '5511999999999', '{"message": "x"}',
                                         0, 0, 0, NULL, 3, 'whatsapp', 'deliver') FROM generate_series(1, 2000) n""",
            i=target)
    execute(core, """INSERT INTO webhook_deliveries (instance_id, event, url, body, delivered_at)
                     SELECT %(i)s, 'delivery', 'http://127.0.0.1:9/', '{}', now() FROM generate_series(1, 2000)""",
            i=target)
    execute(core, "ANALYZE messages")
    execute(core, "ANALYZE webhook_deliveries")
    for statement, params in ((queries.CLAIM, {"zaap_id": "0" * 32, "dispatch_id": uuid4(), "worker_id": uuid4()}),
                              (queries.WEBHOOK_CLAIM, {"instance_id": target, "hold_s": 15.0})):
        with core.pool.connection() as conn:
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + statement, params).fetchall())
        assert "Seq Scan" not in plan, plan


#: LANGUAGE sql functions that read a table and are not on a message's path (called once per
#: worker start).
PLANNED_PER_CALL = {"wmq_queues"}


def test_functions_that_read_tables_keep_their_plans(core: Core) -> None:
    """A LANGUAGE sql function that cannot be inlined (a subquery) is planned again at every call
    on PostgreSQL 16; PL/pgSQL keeps its plans for the connection. wmq_lease_ok, called by every
    claim and transition, cost 0.5 ms of PostgreSQL CPU per message as LANGUAGE sql."""
    with core.pool.connection() as conn:
        rows = conn.execute("""SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                                WHERE p.pronamespace = 'public'::regnamespace AND l.lanname = 'sql'
                                  AND p.proname LIKE 'wmq%'""").fetchall()
    assert rows, "no LANGUAGE sql function found: the query is wrong"
    reading = {name for name, body in rows if re.search(r"\bFROM\b", body, re.IGNORECASE)}
    assert reading <= PLANNED_PER_CALL, sorted(reading - PLANNED_PER_CALL)
