"""The maintenance tasks (workers/maintenance/, service/sql/functions/60_maintenance.sql), each run as the
maintenance loop runs it: in a transaction that holds the leader lock (`run_as_leader`). Worker
liveness is a dramatiq.worker heartbeat, fresh or an hour old."""

from __future__ import annotations

from service.core import control, maintenance, transitions
from service.core.context import Core
from tests.fast.helpers import (
    broker_due,
    claim,
    enqueue,
    events,
    execute,
    instance,
    lead,
    live_broker_row,
    message,
    now,
    one,
    with_settings,
    worker,
)
from workers.maintenance import dispatcher, rescuer, retention
from workers.maintenance.loop import Task, run_as_leader
from workers.transports import simulator

# --- rescuer (I5) -----------------------------------------------------------------------------


def test_rescuer_sends_again_what_a_dead_worker_was_sending(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    assert claim(core, zaap, worker(core, alive=False)) is not None

    assert lead(core, rescuer.run) == 1

    row = message(core, zaap)
    assert (row["status"], row["attempts"]) == ("retryable", 1)  # the uncertain send counts as an attempt
    assert "died during the send; sending again" in row["last_error"]
    assert broker_due(core, zaap) <= now(core)  # at once
    assert claim(core, zaap, worker(core)) is not None


def test_rescuer_discards_a_dead_workers_uncertain_send_when_resend_is_off(core: Core) -> None:
    inst = instance(core)
    zaap, second = enqueue(core, inst), enqueue(core, inst)
    assert claim(core, zaap, worker(core, alive=False)) is not None

    assert lead(with_settings(core, message_queue_resend_uncertain=False), rescuer.run) == 1

    assert message(core, zaap)["status"] == "discarded"
    assert "MESSAGE_QUEUE_RESEND_UNCERTAIN=false" in message(core, zaap)["last_error"]
    assert live_broker_row(core, second) is not None


def test_rescuer_schedules_again_what_a_dead_worker_had_not_sent_yet(core: Core) -> None:
    zaap = enqueue(core, instance(core), typing_ms=1000)
    claimed = claim(core, zaap, worker(core, alive=False))
    assert claimed is not None and claimed.granted == "typing"

    assert lead(core, rescuer.run) == 1

    # The rescue counts an attempt: a message whose handling kills its worker does not go forever.
    assert (message(core, zaap)["status"], message(core, zaap)["attempts"]) == ("scheduled", 1)
    assert live_broker_row(core, zaap) is not None
    *_, (before, after, reason) = events(core, zaap)
    assert (before, after) == ("running", "scheduled") and reason is not None and "died before the send" in reason


def test_rescuer_never_takes_a_message_from_a_slow_live_worker(core: Core) -> None:
    zaap = enqueue(core, instance(core))
    assert claim(core, zaap, worker(core)) is not None
    execute(core, "UPDATE messages SET started_at = now() - interval '1 hour' WHERE zaap_id = %(z)s", z=zaap)
    assert live_broker_row(core, zaap) is not None  # the worker holds its broker message

    assert lead(core, rescuer.run) == 0

    assert message(core, zaap)["status"] == "sending"


def test_rescuer_takes_back_what_a_live_worker_gave_up_recording(core: Core) -> None:
    zaap = enqueue(core, instance(core), typing_ms=1000)
    me = worker(core)
    assert claim(core, zaap, me) is not None
    execute(core, "DELETE FROM dramatiq.queue WHERE message_id = %(id)s", id=message(core, zaap)["dispatch_id"])

    assert lead(core, rescuer.run) == 1

    assert message(core, zaap)["status"] == "scheduled"
    assert live_broker_row(core, zaap) is not None
    assert events(core, zaap)[-1] == ("running", "scheduled",
                                      f"rescued: worker {me} gave up recording it before the send (the attempt counts)")


def test_rescuer_releases_the_sessions_of_a_dead_holder(core: Core) -> None:
    dead, alive = worker(core, alive=False), worker(core)
    orphaned, held = instance(core, transport="neonize"), instance(core, transport="neonize")
    for inst, owner in ((orphaned, dead), (held, alive)):
        execute(core, "UPDATE instances SET connection_state = 'connected', owner_worker_id = %(w)s WHERE id = %(i)s",
                w=owner, i=inst)

    lead(core, rescuer.run)

    state = "SELECT connection_state, owner_worker_id FROM instances WHERE id = %(i)s"
    assert one(core, state, i=orphaned) == {"connection_state": "disconnected", "owner_worker_id": None}
    assert one(core, state, i=held) == {"connection_state": "connected", "owner_worker_id": alive}


# --- dispatcher -------------------------------------------------------------------------------


def test_dispatcher_dispatches_again_a_head_whose_broker_row_was_lost(core: Core) -> None:
    zaap = enqueue(core, instance(core), delay_ms=60_000)
    lost = live_broker_row(core, zaap)
    assert lost is not None
    execute(core, "DELETE FROM dramatiq.queue WHERE message_id = %(id)s", id=lost["message_id"])

    assert lead(core, dispatcher.run) == 1

    again = live_broker_row(core, zaap)
    assert again is not None and again["available_at"] == lost["available_at"]  # due when it was due
    assert lead(core, dispatcher.run) == 0  # nothing is lost any more


def test_dispatcher_leaves_a_paused_instance_alone(core: Core) -> None:
    inst = instance(core)
    zaap = enqueue(core, inst)
    control.set_paused(core, inst, True)  # withdraws the head's broker row

    assert lead(core, dispatcher.run) == 0

    assert live_broker_row(core, zaap) is None


# --- retention --------------------------------------------------------------------------------


def test_retention_deletes_finished_messages_past_the_period_with_their_history(core: Core) -> None:
    inst = instance(core)
    old, recent, waiting = enqueue(core, inst), enqueue(core, inst), enqueue(core, inst)
    me = worker(core)
    for zaap in (old, recent):
        claim(core, zaap, me)
        transitions.complete(core, zaap, me, "WA")
    execute(core, "UPDATE messages SET finished_at = now() - interval '2 hours' WHERE zaap_id = %(z)s", z=old)
    execute(core, "UPDATE messages SET enqueued_at = now() - interval '2 days' WHERE zaap_id = %(z)s", z=waiting)

    assert lead(core, retention.run) == 1

    left = {r["zaap_id"] for r in core.all("SELECT zaap_id FROM messages")}
    assert left == {recent, waiting}
    assert events(core, old) == []
    assert events(core, recent) != [] and events(core, waiting) != []


def test_retention_deletes_webhook_deliveries_finished_before_the_period(core: Core) -> None:
    inst = instance(core)
    execute(core, """INSERT INTO webhook_deliveries (instance_id, event, url, body, delivered_at, given_up_at)
                     VALUES (%(i)s, 'delivery', 'https://x.example/', '{"n": "old"}', now() - interval '2 hours', NULL),
                            (%(i)s, 'delivery', 'https://x.example/', '{"n": "gave up"}', NULL,
                             now() - interval '2 hours'),
                            (%(i)s, 'delivery', 'https://x.example/', '{"n": "recent"}', now(), NULL),
                            (%(i)s, 'delivery', 'https://x.example/', '{"n": "pending"}', NULL, NULL)""", i=inst)
    execute(core, "UPDATE webhook_deliveries SET created_at = now() - interval '2 days'")
    lead(core, retention.run)
    left = {r["n"] for r in core.all("SELECT body->>'n' AS n FROM webhook_deliveries")}
    assert left == {"recent", "pending"}


def test_the_simulators_record_is_purged_by_the_simulator_not_by_the_core(core: Core) -> None:
    inst = instance(core)
    execute(core, """INSERT INTO simulator_events (instance_id, kind, phone, started_at, ended_at)
                     VALUES (%(i)s, 'send', '5511999999999', now() - interval '2 hours', now() - interval '2 hours'),
                            (%(i)s, 'send', '5511999999999', now(), now())""", i=inst)
    count = "SELECT count(*) AS n FROM simulator_events"

    lead(core, retention.run)
    assert one(core, count) == {"n": 2}

    with core.pool.connection() as conn, conn.transaction():
        assert simulator.purge(conn, core.settings) == 1
    assert one(core, count) == {"n": 1}


# --- the leader lock --------------------------------------------------------------------------


def test_only_one_process_leads_maintenance_at_a_time(core: Core) -> None:
    ran: list[str] = []
    task = Task("probe", lambda conn: ran.append("ran") or 1)

    with core.pool.connection() as conn, conn.transaction():
        assert maintenance.try_lead(conn)
        assert run_as_leader(core.pool, task) is None

    assert ran == []
    assert run_as_leader(core.pool, task) == 1  # the lock ended with its transaction
