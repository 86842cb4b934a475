"""I1: enqueue and completion of the previous head race on the instance lock; no message may be
left undispatched whichever commits first."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

from service.core import reads
from service.core.context import Core
from service.core.models import MessageRequest
from tests.stack import Stack

ROUNDS = 120
INSTANCES = 4


def race(core: Core, stack: Stack, instance: dict[str, Any], seed: int) -> list[str]:
    """Enqueue each message right as the previous one is being sent or completing."""
    rng = random.Random(seed)
    instance_id = UUID(instance["id"])
    accepted: list[str] = []
    request = MessageRequest(phone="5511999999999", message_type="text", payload={"message": "race"})
    for _ in range(ROUNDS):
        if accepted and rng.random() < 0.5:
            # Wait for the previous head to reach the send, then enqueue into its completion.
            deadline = time.monotonic() + 10
            while reads.message(core, accepted[-1]).status not in ("sending", "completed"):
                assert time.monotonic() < deadline, "previous message never reached the send"
        else:
            time.sleep(rng.uniform(0, 0.02))
        accepted.append(stack.enqueue(core, instance_id, request).zaap_id)
    return accepted


def test_enqueue_racing_completion_never_strands_a_message(stack: Stack) -> None:
    instances = [stack.create_instance() for _ in range(INSTANCES)]
    with stack.core() as core, ThreadPoolExecutor(INSTANCES) as pool:
        results = list(pool.map(lambda args: race(core, stack, *args), [(i, n) for n, i in enumerate(instances)]))
    all_ids = [z for ids in results for z in ids]
    stack.wait_completed(all_ids, timeout=120)
    for instance, accepted in zip(instances, results, strict=True):
        assert [s["zaap_id"] for s in stack.sends(instance)] == accepted
