"""A webhook attempt is claimed (counted) before its POST and recorded after it, with nothing
held in between: what a poster that dies mid-post, or stands still past its hold, leaves behind."""

from __future__ import annotations

import threading
import time
from typing import Any
from uuid import UUID

from service.core import webhooks
from service.core.context import Core
from tests.fast.helpers import execute, instance, one


def delivery(core: Core, instance_id: UUID, n: int = 1) -> None:
    webhooks.configure(core, instance_id, {"delivery": "https://hooks.example.com/x"})
    for _ in range(n):
        execute(core, "SELECT wmq_webhook(%(i)s, 'delivery', '{}')", i=instance_id)


def row(core: Core, claimed: dict[str, Any]) -> dict[str, Any]:
    found = one(core, "SELECT * FROM webhook_deliveries WHERE id = %(id)s", id=claimed["id"])
    assert found is not None
    return found


def test_a_claim_counts_the_attempt_before_the_post_and_holds_the_instance(core: Core) -> None:
    target = instance(core)
    delivery(core, target, 2)
    claimed = webhooks.claim(core, target, 60)
    assert claimed is not None and claimed["attempts"] == 1 and claimed["origin"] == "hooks.example.com"
    stored = row(core, claimed)
    assert stored["attempts"] == 1 and stored["posting_since"] is not None
    # Held: neither this delivery nor the instance's next one may be claimed meanwhile (order).
    assert webhooks.claim(core, target, 60) is None
    assert webhooks.due(core, busy=[], blocked=[]) == []
    assert webhooks.delivered(core, claimed, 200)
    assert row(core, claimed)["posting_since"] is None
    second = webhooks.claim(core, target, 60)
    assert second is not None and second["id"] > claimed["id"]


def test_a_stale_poster_records_nothing_over_a_later_attempt(core: Core) -> None:
    target = instance(core)
    delivery(core, target)
    first = webhooks.claim(core, target, 0)  # held for no time: as if its poster stood still
    assert first is not None
    time.sleep(0.01)
    second = webhooks.claim(core, target, 60)
    assert second is not None and second["attempts"] == 2 and second["unfinished_attempts"] == 1
    assert not webhooks.delivered(core, first, 200), "the first claim is no longer the delivery's"
    assert row(core, second)["delivered_at"] is None
    assert webhooks.failed(core, second, status=500, error="HTTP 500", backoff_s=1, give_up=False)


def test_a_delivery_whose_posts_never_finish_is_given_up_and_says_so(core: Core) -> None:
    target = instance(core)
    delivery(core, target)
    claimed = None
    for _ in range(webhooks.MAX_UNFINISHED_ATTEMPTS + 1):  # each poster dies mid-post
        claimed = webhooks.claim(core, target, 0)
        assert claimed is not None
        time.sleep(0.01)
    assert claimed is not None and claimed["unfinished_attempts"] == webhooks.MAX_UNFINISHED_ATTEMPTS
    give_up, _, why = webhooks.retry_policy(attempts=claimed["attempts"], age_s=1, retry_for_s=3600,
                                            unfinished=claimed["unfinished_attempts"])
    assert give_up and why == "given up: 3 posts never finished (the worker posting it stopped)"


def test_the_retry_policy_backs_off_and_gives_up_in_time() -> None:
    assert [webhooks.retry_policy(attempts=n, age_s=0, retry_for_s=3600)[1] for n in (1, 2, 3, 10, 20)] == [
        1, 2, 4, 300, 300]
    assert webhooks.retry_policy(attempts=5, age_s=10, retry_for_s=3600)[0] is False
    assert webhooks.retry_policy(attempts=5, age_s=3600, retry_for_s=3600) == (
        True, 16, "given up after 5 attempts in 3600 s")


def test_a_rotated_secret_keeps_signing_for_its_grace(core: Core) -> None:
    target = instance(core)
    delivery(core, target)
    old = webhooks.settings(core, target)
    assert old is not None
    rotated = webhooks.rotate_secret(core, target, 3600)
    assert rotated["secret"] != old["secret"] and rotated["previous_secret"] == old["secret"]
    claimed = webhooks.claim(core, target, 60)
    assert claimed is not None and (claimed["secret"], claimed["previous_secret"]) == (rotated["secret"],
                                                                                      old["secret"])
    webhooks.rotate_secret(core, target, 0)
    assert webhooks.delivered(core, claimed, 200)
    delivery(core, target)
    later = webhooks.claim(core, target, 60)
    assert later is not None and later["previous_secret"] is None, "the grace is over"


def test_the_poster_signs_the_delivery_id_with_every_valid_secret() -> None:
    from workers.webhook_poster import signature

    one_secret = signature(["s1"], 1700000000, 7, b"{}")
    both = signature(["s1", "s0"], 1700000000, 7, b"{}")
    assert both.startswith(one_secret + ",v2=") and one_secret.startswith("t=1700000000,v2=")
    assert signature(["s1"], 1700000000, 8, b"{}") != one_secret, "another id, another signature"


def test_a_delivery_written_while_the_previous_ones_outcome_is_recorded_is_not_stranded(core: Core) -> None:
    """The event's transaction and the outcome's meet on the instance's row: an outcome that read
    the instance's pending deliveries before the new one committed left it with no due time."""
    target = instance(core)
    delivery(core, target)
    claimed = webhooks.claim(core, target, 60)
    assert claimed is not None
    recorded: list[bool] = []
    with core.pool.connection() as event:
        with event.transaction():
            event.execute("SELECT wmq_webhook(%(i)s, 'delivery', '{}')", {"i": target})
            outcome = threading.Thread(target=lambda: recorded.append(webhooks.delivered(core, claimed, 200)))
            outcome.start()
            outcome.join(0.5)  # it waits for the event's transaction (or, unguarded, is done already)
        outcome.join(10)
    assert recorded == [True]
    assert webhooks.due(core, busy=[], blocked=[]) == [(target, "hooks.example.com")], "the new head is due"
