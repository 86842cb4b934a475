"""Session instances spread over workers by leases, with real worker processes: a steady stream
over 30 session instances (the simulator as a session transport) while the workers go 1 → 3 → 1.
The shares rebalance, every message is sent once and in order, the SIGTERMed workers hand their
sessions over and exit 0 within the grace period, and no instance ever shows two owners."""

from __future__ import annotations

import collections
import signal
import time
from typing import Any

from tests.stack import Stack, wait_until
from tests.test_chaos import Sender

SESSION_INSTANCES = 30


def shares(stack: Stack) -> list[int]:
    rows = stack.all("SELECT worker_id, count(*) AS n FROM session_leases"
                     " WHERE worker_id IS NOT NULL AND expires_at > now() GROUP BY 1")
    return sorted(r["n"] for r in rows)


def fair(counts: list[int], total: int, workers: int) -> bool:
    """Every lease owned, by `workers` workers, each within one of the fair share."""
    share = -(-total // workers)
    return len(counts) == workers and sum(counts) == total and all(share - 1 <= n <= share + 1 for n in counts)


def overlapping_owners(stack: Stack) -> list[Any]:
    """Instances whose ownerships overlap in time (there must be none)."""
    return stack.all("""
        SELECT a.instance_id FROM session_lease_history a JOIN session_lease_history b
          ON a.instance_id = b.instance_id AND a.id < b.id
         WHERE b.acquired_at < COALESCE(a.released_at, 'infinity')""")


def test_sessions_rebalance_as_workers_come_and_go_and_nothing_is_lost_or_repeated(make_stack: Any) -> None:
    stack: Stack = make_stack(workers=1, MESSAGE_QUEUE_LEASE_INTERVAL="300ms")
    instances = [stack.create_instance(transport="simulator-session") for _ in range(SESSION_INSTANCES)]
    for instance in instances:
        stack.simulate(instance, latencyMs=50)
    wait_until(lambda: shares(stack) == [SESSION_INSTANCES], 20, "the one worker to own every session")
    sender = Sender(stack, instances)
    sender.start()
    try:
        time.sleep(2)
        joined = [stack.start_worker(), stack.start_worker()]
        # Fair shares of 10, within the slack of one: a worker gives leases away only when it holds
        # more than one over its share, and never one with a send in flight, so a worker shedding
        # from 15 while sends run may stop at 11, leaving 9 to the newcomer.
        wait_until(lambda: fair(shares(stack), SESSION_INSTANCES, 3), 30, "three fair shares")
        time.sleep(2)
        for worker in joined:
            started = time.monotonic()
            assert stack.stop_process(worker, signal.SIGTERM, timeout=60) == 0, stack.logs()
            assert time.monotonic() - started < 60
            stack.workers.remove(worker)
        wait_until(lambda: shares(stack) == [SESSION_INSTANCES], 20, "the sessions back with the one left")
        time.sleep(2)
    finally:
        sender.stopping.set()
        sender.join(timeout=30)

    accepted = [z for ids in sender.accepted.values() for z in ids]
    assert sender.refused == 0 and len(accepted) > 100
    stack.wait_completed(accepted, timeout=60)
    for instance in instances:
        sent = [s["zaap_id"] for s in stack.sends(instance)]
        assert sent == sender.accepted[instance["id"]], collections.Counter(sent).most_common(3)
    owners = stack.one("SELECT count(DISTINCT worker_id) AS n FROM session_lease_history")["n"]
    assert owners == 3, "every worker owned sessions in turn"
    assert not overlapping_owners(stack)


def test_a_worker_that_stops_hands_its_sessions_over_at_once_not_after_the_ttl(make_stack: Any) -> None:
    """A stopped worker leaves the live ones as it exits: were it still counted until its
    heartbeat went stale (the TTL, 60 s here), the one left would stop at its share of two and
    leave the sessions handed over to it unowned, their messages waiting, for that long."""
    stack: Stack = make_stack(workers=2, MESSAGE_QUEUE_LEASE_INTERVAL="300ms", MESSAGE_QUEUE_HEARTBEAT_TTL="60s")
    instances = [stack.create_instance(transport="simulator-session") for _ in range(4)]
    wait_until(lambda: shares(stack) == [2, 2], 20, "two shares of two")
    leaving, staying = stack.workers
    assert stack.stop_process(leaving, signal.SIGTERM, timeout=60) == 0, stack.logs()
    stack.workers.remove(leaving)
    assert stack.live_workers() == 1, "the stopped worker still counts as live"
    wait_until(lambda: shares(stack) == [4], 10, "the one left to own every session, well before the TTL")
    accepted = [stack.send_text(instance)["zaapId"] for instance in instances]
    stack.wait_completed(accepted, timeout=20)
