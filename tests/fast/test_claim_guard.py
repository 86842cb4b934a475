"""The check right before the irreversible write (workers/claim_guard.py, sql `wmq_claim_holds`): a
fresh claim costs no query; an old one is checked, and a worker that stood still while its message
was rescued, re-claimed by another thread, or its session lease taken, writes nothing."""

from __future__ import annotations

import time
from uuid import UUID

import pytest

from service.core import transitions
from service.core.context import Core
from service.core.models import Claimed
from service.core.session_host import SessionHost
from tests.fast.helpers import claim, enqueue, execute, instance, lead, message, one, redispatch, with_settings, worker
from workers.claim_guard import ClaimGuard, guard_bound
from workers.maintenance import rescuer
from workers.transports import ClaimLost

BOUND = 5.0


def claimed(core: Core, zaap: str, worker_id: UUID) -> Claimed:
    got = claim(core, zaap, worker_id)
    assert got is not None and got.granted == "send"
    return got


def stood_still(guard: ClaimGuard, seconds: float) -> None:
    """As if the worker had been frozen for `seconds` since its claim (or its last check)."""
    guard.checked_at -= seconds


def heartbeat_age(core: Core, worker_id: UUID) -> float:
    row = one(core, "SELECT extract(epoch FROM now() - heartbeat_at)::float8 AS age FROM dramatiq.worker"
                    " WHERE worker_id = %(w)s", w=worker_id)
    assert row is not None
    return float(row["age"])


def test_a_fresh_claim_is_taken_as_it_is_without_a_query(core: Core) -> None:
    holder = worker(core)
    zaap = enqueue(core, instance(core))
    got = claimed(core, zaap, holder)
    guard = ClaimGuard(core, got, holder, BOUND)
    deadline = guard()
    assert guard.checks == 0
    assert got.claimed_db_at is not None and deadline is not None
    assert abs((deadline - got.claimed_db_at).total_seconds() - BOUND) < 1e-6


def test_an_old_claim_that_still_holds_is_checked_and_the_heartbeat_written(core: Core) -> None:
    holder = worker(core)
    execute(core, "UPDATE dramatiq.worker SET heartbeat_at = now() - interval '30 seconds' WHERE worker_id = %(w)s",
            w=holder)
    zaap = enqueue(core, instance(core))
    guard = ClaimGuard(core, claimed(core, zaap, holder), holder, BOUND)
    stood_still(guard, BOUND + 1)
    before = time.monotonic()
    deadline = guard()
    assert guard.checks == 1 and deadline is not None
    assert heartbeat_age(core, holder) < 5, "the check writes the heartbeat: no rescue for another TTL"
    assert guard.checked_at >= before
    guard()
    assert guard.checks == 1, "checked once, good for another bound"


def test_a_rescued_message_is_not_written_by_its_frozen_worker(core: Core) -> None:
    holder = worker(core)
    zaap = enqueue(core, instance(core))
    guard = ClaimGuard(core, claimed(core, zaap, holder), holder, BOUND)
    execute(core, "UPDATE dramatiq.worker SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = %(w)s",
            w=holder)
    assert lead(core, lambda c, conn: rescuer.run(c, conn, judge=True)) == 1  # type: ignore[misc]
    assert message(core, zaap)["status"] == "retryable"
    stood_still(guard, BOUND + 1)
    with pytest.raises(ClaimLost):
        guard()
    assert message(core, zaap)["status"] == "retryable", "left untouched, to whoever sends it now"


def test_the_same_worker_claiming_the_rescued_message_again_does_not_revive_the_old_claim(core: Core) -> None:
    """A thawed worker's other thread may claim the retry: the frozen thread's claim, under the old
    dispatch, must still not write."""
    holder = worker(core)
    zaap = enqueue(core, instance(core))
    guard = ClaimGuard(core, claimed(core, zaap, holder), holder, BOUND)
    execute(core, "UPDATE messages SET status = 'retryable' WHERE zaap_id = %(z)s", z=zaap)
    redispatch(core, zaap)
    again = claimed(core, zaap, holder)
    assert again.dispatch_id != guard.claim.dispatch_id
    stood_still(guard, BOUND + 1)
    with pytest.raises(ClaimLost):
        guard()
    fresh = ClaimGuard(core, again, holder, BOUND)
    stood_still(fresh, BOUND + 1)
    assert fresh() is not None


def test_a_session_lease_taken_over_stops_the_write(core: Core) -> None:
    holder, other = worker(core), worker(core)
    session = instance(core, transport="simulator-session")
    SessionHost(core, holder).lease_round(judge=True)
    zaap = enqueue(core, session)
    guard = ClaimGuard(core, claimed(core, zaap, holder), holder, BOUND)
    # The holder stood still: its lease and heartbeat went stale, and the other worker took over.
    execute(core, "UPDATE session_leases SET expires_at = now() - interval '1 second' WHERE worker_id = %(w)s",
            w=holder)
    execute(core, "UPDATE dramatiq.worker SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = %(w)s",
            w=holder)
    assert session in SessionHost(core, other).lease_round(judge=True)
    stood_still(guard, BOUND + 1)
    with pytest.raises(ClaimLost):
        guard()


def test_the_bound_leaves_room_for_a_heartbeat_interval_within_the_ttl(core: Core) -> None:
    settings = with_settings(core, message_queue_heartbeat_interval=15.0, message_queue_heartbeat_ttl=60.0).settings
    assert guard_bound(settings) == 22.5
    assert guard_bound(settings) + settings.message_queue_heartbeat_interval < settings.message_queue_heartbeat_ttl


def test_a_late_answer_completes_a_message_left_retryable(core: Core) -> None:
    """wmq_complete takes the id of a call that answered after the job timeout: the message was
    recorded as uncertain (retryable, held back), and is completed with its retry withdrawn."""
    holder = worker(core)
    zaap = enqueue(core, instance(core))
    claimed(core, zaap, holder)
    assert transitions.fail(core, zaap, holder, "uncertain: no answer", permanent=False, backoff=60) == "retryable"
    assert transitions.complete(core, zaap, holder, "WA-LATE")
    row = message(core, zaap)
    assert (row["status"], row["whatsapp_message_id"], row["attempts"]) == ("completed", "WA-LATE", 1)


def test_a_late_answer_does_not_complete_a_retry_claimed_since(core: Core) -> None:
    """The earlier call's id arrives while this worker is sending the retry under a new dispatch:
    that send is under way, and its own completion records it."""
    holder = worker(core)
    zaap = enqueue(core, instance(core))
    first = claimed(core, zaap, holder)
    assert transitions.fail(core, zaap, holder, "uncertain: no answer", permanent=False, backoff=0) == "retryable"
    retry = claimed(core, zaap, holder)
    assert retry.dispatch_id != first.dispatch_id
    assert not transitions.complete(core, zaap, holder, "WA-LATE", dispatch_id=first.dispatch_id)
    assert message(core, zaap)["status"] == "sending"
    assert transitions.complete(core, zaap, holder, "WA-RETRY", dispatch_id=retry.dispatch_id)
    assert message(core, zaap)["whatsapp_message_id"] == "WA-RETRY"
