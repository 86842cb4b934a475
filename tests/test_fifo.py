"""Promise 1: strict FIFO per instance, with one and with several worker processes (I4)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import psycopg
import pytest

from tests.stack import Stack, wait_until


def post_load(stack: Stack, created: list[dict[str, Any]], per_instance: int) -> dict[str, list[str]]:
    """Each instance's messages posted one after another, the instances in parallel.

    Returns each instance's zaap ids in acceptance order.
    """

    def post_all(instance: dict[str, Any]) -> tuple[str, list[str]]:
        accepted = []
        for n in range(per_instance):
            answer = stack.send_text(instance, f"message {n}")
            assert answer["sequence"] == n + 1
            accepted.append(answer["zaapId"])
        return instance["id"], accepted

    with ThreadPoolExecutor(max_workers=len(created)) as pool:
        return dict(pool.map(post_all, created))


def assert_sent_in_acceptance_order(stack: Stack, accepted: dict[str, list[str]]) -> None:
    for instance_id, zaap_ids in accepted.items():
        sent = [e["zaap_id"] for e in stack.sends(instance_id)]
        assert len(sent) == len(set(sent)), f"duplicate sends for {instance_id}"
        assert sent == zaap_ids, f"instance {instance_id} sent out of order"


def test_each_instance_sends_in_acceptance_order(stack: Stack) -> None:
    instances = [stack.create_instance(name=f"load-{i}") for i in range(20)]
    accepted = post_load(stack, instances, per_instance=50)
    all_ids = [z for ids in accepted.values() for z in ids]
    assert len(set(all_ids)) == 1000
    stack.wait_completed(all_ids, timeout=240)
    assert_sent_in_acceptance_order(stack, accepted)
    # Every broker message was acked (workers/broker.py: QueueConsumer.ack), none left behind.
    wait_until(lambda: stack.one("SELECT count(*) AS n FROM dramatiq.queue")["n"] == 0, 30, "every ack")


def test_two_worker_processes_never_overlap_an_instance(make_stack: Any) -> None:
    stack: Stack = make_stack(workers=2, MESSAGE_QUEUE_WORKER_THREADS=4)
    instances = [stack.create_instance(name=f"load-{i}") for i in range(20)]
    for instance in instances:
        # Give every send a width, so that an overlap would show in the timestamps.
        stack.simulate(instance, latencyMs=5)
    accepted = post_load(stack, instances, per_instance=50)
    all_ids = [z for ids in accepted.values() for z in ids]
    stack.wait_completed(all_ids, timeout=300)
    assert_sent_in_acceptance_order(stack, accepted)

    workers_used = set()
    for instance_id in accepted:
        sends = stack.sends(instance_id)
        for earlier, later in pairwise(sends):
            assert later["started_at"] >= earlier["ended_at"], f"overlapping sends on {instance_id}"
        workers_used |= {
            r["worker_id"] for r in stack.all(
                "SELECT DISTINCT worker_id FROM message_events WHERE instance_id = %s AND to_status = 'sending'",
                (instance_id,),
            )
        }
    assert len(workers_used) == 2, "both worker processes should have served the load"


def test_second_in_flight_message_is_rejected_by_the_database(stack: Stack) -> None:
    instance = stack.create_instance()
    stack.simulate(instance, connected=False)
    first = stack.send_text(instance, "one", delayMessage=3600)
    second = stack.send_text(instance, "two")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("UPDATE messages SET status = 'running' WHERE zaap_id = %s", (first["zaapId"],))
        with pytest.raises(psycopg.errors.UniqueViolation, match="messages_one_in_flight"):
            conn.execute("UPDATE messages SET status = 'sending' WHERE zaap_id = %s", (second["zaapId"],))
