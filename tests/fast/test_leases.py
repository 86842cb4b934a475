"""Session leases (service/sql/functions/25_leases.sql), through the core: fair shares with a
slack of one, routing of a session instance's head to its owner's queue, the fence that makes a
worker that lost its lease unable to claim or record, takeover only by a judge, and a history
that never shows two owners at once."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from service.core import transitions
from service.core.context import Core
from service.core.session_host import SessionHost
from tests.fast.helpers import claim, enqueue, execute, instance, live_broker_row, message, one, sql, worker

SESSION = "simulator-session"


def host(core: Core, worker_id: UUID) -> SessionHost:
    return SessionHost(core, worker_id)


def queue_of(worker_id: UUID) -> str:
    return f"whatsapp-s.{worker_id.hex[:12]}"


def owners(core: Core) -> dict[UUID, int]:
    rows = sql(core, "SELECT worker_id, count(*) AS n FROM session_leases WHERE worker_id IS NOT NULL GROUP BY 1")
    return {r["worker_id"]: r["n"] for r in rows}


def expire(core: Core, worker_id: UUID) -> None:
    """The worker stops renewing (frozen, or dead): its leases and its heartbeat go stale."""
    execute(core, "UPDATE session_leases SET expires_at = now() - interval '1 second' WHERE worker_id = %(w)s",
            w=worker_id)
    execute(core, "UPDATE dramatiq.worker SET heartbeat_at = now() - interval '1 hour' WHERE worker_id = %(w)s",
            w=worker_id)


def no_two_owners_at_once(core: Core) -> None:
    rows = sql(core, "SELECT instance_id, acquired_at, released_at FROM session_lease_history ORDER BY instance_id, id")
    by_instance: dict[UUID, list[dict[str, Any]]] = {}
    for row in rows:
        by_instance.setdefault(row["instance_id"], []).append(row)
    for spans in by_instance.values():
        for earlier, later in zip(spans, spans[1:], strict=False):
            assert earlier["released_at"] is not None and earlier["released_at"] <= later["acquired_at"], spans


def test_live_workers_take_fair_shares_and_give_away_only_past_the_slack(core: Core) -> None:
    for _ in range(9):
        instance(core, transport=SESSION)
    instance(core)  # a simulator instance needs no lease
    a, b, c = worker(core), worker(core), worker(core)
    assert len(host(core, a).lease_round(judge=True)) == 3  # three live workers: a third each
    assert len(host(core, b).lease_round(judge=True)) == 3
    assert len(host(core, c).lease_round(judge=True)) == 3
    assert sorted(owners(core).values()) == [3, 3, 3]
    assert one(core, "SELECT count(*) AS n FROM session_leases")["n"] == 9  # type: ignore[index]

    execute(core, "DELETE FROM dramatiq.worker WHERE worker_id = %(w)s", w=c)  # c is gone: shares of 5
    host(core, a).lease_round(judge=True)  # nothing free yet: c's leases are still valid
    assert owners(core)[a] == 3
    expire(core, c)
    host(core, a).lease_round(judge=True)
    host(core, b).lease_round(judge=True)
    assert sorted(owners(core).values()) == [4, 5]
    d = worker(core)  # a newcomer: shares of 3; 4 is within the slack of one, 5 is not
    host(core, a).lease_round(judge=True)
    host(core, b).lease_round(judge=True)
    assert sorted(owners(core).values()) == [3, 4]
    assert len(host(core, d).lease_round(judge=True)) == 2, "the newcomer takes what was given away"
    no_two_owners_at_once(core)


def test_a_head_goes_to_its_owner_and_a_worker_that_lost_its_lease_can_neither_claim_nor_record(core: Core) -> None:
    session = instance(core, transport=SESSION)
    a, b = worker(core), worker(core)
    zaap = enqueue(core, session)
    assert live_broker_row(core, zaap)["queue_name"] == "whatsapp-sessions"  # type: ignore[index]  # nobody owns it
    assert claim(core, zaap, a) is None, "no lease, no claim"

    host(core, a).lease_round(judge=True)
    assert live_broker_row(core, zaap)["queue_name"] == queue_of(a)  # type: ignore[index]
    assert claim(core, zaap, b) is None, "only the owner claims"
    claimed = claim(core, zaap, a)
    assert claimed is not None and claimed.granted == "send"

    expire(core, a)  # a is frozen mid-send past the TTL
    assert not host(core, b).lease_round(judge=False), "only a judge takes an expired lease over"
    assert session in host(core, b).lease_round(judge=True)
    after = message(core, zaap)
    assert after["status"] == "retryable" and after["fence"] == 2, "taken over, its send to go again"
    assert live_broker_row(core, zaap)["queue_name"] == queue_of(b)  # type: ignore[index]
    assert not transitions.complete(core, zaap, a, "WA-late"), "a woke up: its completion is refused"
    assert transitions.fail(core, zaap, a, "late", permanent=False, backoff=0) is None
    assert message(core, zaap)["status"] == "retryable"

    stale = one(core, "SELECT * FROM wmq_claim(%(z)s, %(d)s, %(w)s)", z=zaap, d=message(core, zaap)["dispatch_id"], w=a)
    assert stale is None
    again = claim(core, zaap, b)
    assert again is not None and transitions.complete(core, zaap, b, "WA-1")
    no_two_owners_at_once(core)


def test_after_an_outage_owners_renew_their_own_and_nobody_takes_over(core: Core) -> None:
    session = instance(core, transport=SESSION)
    a, b = worker(core), worker(core)
    host(core, a).lease_round(judge=True)
    execute(core, "UPDATE session_leases SET expires_at = now() - interval '1 second'")  # everyone was cut off
    assert not host(core, b).lease_round(judge=False)  # back first, but no judge yet: takes nothing
    assert not host(core, b).lease_round(judge=True), "a's heartbeat is fresh: its lease is late, not abandoned"
    assert session in host(core, a).lease_round(judge=False), "its own lease, renewed"
    assert one(core, "SELECT fence FROM session_leases")["fence"] == 1  # type: ignore[index]


def test_a_stopping_worker_gives_its_leases_up_for_the_others(core: Core) -> None:
    sessions = [instance(core, transport=SESSION) for _ in range(4)]
    a, b = worker(core), worker(core)
    zaaps = [enqueue(core, s) for s in sessions]
    host(core, a).lease_round(judge=True)
    host(core, b).lease_round(judge=True)
    assert host(core, a).lease_round(judge=True, stopping=True) == {}
    assert owners(core) == {b: 2}
    assert {live_broker_row(core, z)["queue_name"] for z in zaaps} == {  # type: ignore[index]
        "whatsapp-sessions", queue_of(b)}
    execute(core, "DELETE FROM dramatiq.worker WHERE worker_id = %(w)s", w=a)
    assert len(host(core, b).lease_round(judge=True)) == 4
    assert {live_broker_row(core, z)["queue_name"] for z in zaaps} == {queue_of(b)}  # type: ignore[index]
    assert {r["ended_by"] for r in sql(core, "SELECT ended_by FROM session_lease_history WHERE worker_id = %(w)s",
                                            w=a)} == {"released"}
    no_two_owners_at_once(core)


def test_a_session_instance_has_a_free_lease_from_its_creation(core: Core) -> None:
    """Made with the instance (a trigger), not by a round: a round that made the missing rows
    scanned every instance, which a fleet of 100 workers over 10,000 sessions could not keep up
    with (bench/leases.py)."""
    session = instance(core, transport=SESSION)
    instance(core)  # a simulator instance needs no lease
    rows = sql(core, "SELECT instance_id, worker_id FROM session_leases")
    assert rows == [{"instance_id": session, "worker_id": None}], rows


def test_a_lease_is_written_again_only_once_half_its_ttl_is_gone(core: Core) -> None:
    """Every round renews, but a lease with more than half its TTL left is not rewritten (one write
    per lease every half TTL, not one per round: bench/leases.py)."""
    session = instance(core, transport=SESSION)
    a = worker(core)
    host(core, a).lease_round(judge=True)
    ttl = core.settings.message_queue_heartbeat_ttl

    def lease() -> dict[str, Any]:
        row = one(core, "SELECT xmin::text AS version, expires_at - now() AS left FROM session_leases"
                        " WHERE instance_id = %(i)s", i=session)
        assert row is not None
        return row

    fresh = lease()
    host(core, a).lease_round(judge=True)
    assert lease()["version"] == fresh["version"], "rewritten with more than half its TTL left"
    execute(core, "UPDATE session_leases SET expires_at = now() + make_interval(secs => %(s)s)", s=ttl / 2 - 1)
    host(core, a).lease_round(judge=True)
    assert lease()["left"].total_seconds() > ttl - 5, "not renewed with less than half its TTL left"
