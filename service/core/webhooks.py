"""Webhooks as the core sees them: each instance's URLs and signing secret, its deliveries, and
the steps of posting them (workers/webhook_poster.py posts; service/sql/functions/70_webhooks.sql writes the
deliveries in the transactions of the changes they report).

A delivery is posted until the receiver answers 2xx, retried with exponential backoff for
`WEBHOOK_RETRY_FOR`, then given up (`retry_policy`); deliveries of one instance go out one at a
time, in order. Each attempt is claimed (counted) before its POST and recorded after it, with no
transaction open in between.
"""

from __future__ import annotations

import secrets
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from service.core import queries
from service.core.context import Core
from service.core.errors import InstanceNotFound

#: The events an instance may want: Z-API's route name (`update-webhook-<event>`) and the key it
#: has in the settings' answer. A new event is an entry here and a `wmq_webhook(…, '<event>', …)`
#: where it happens (service/sql/functions/70_webhooks.sql): routes, OpenAPI and storage follow.
EVENTS = {"delivery": "delivery", "message-status": "messageStatus", "connected": "connected",
          "disconnected": "disconnected"}


def configure(core: Core, instance_id: UUID, urls: dict[str, str | None]) -> dict[str, Any]:
    """Set (or clear, with None) the URL of each event named in `urls`; the others keep theirs.
    The signing secret is made with the first setting and kept."""
    unknown = set(urls) - set(EVENTS)
    assert not unknown, f"not webhook events: {sorted(unknown)}"
    try:
        row = core.one(queries.SET_WEBHOOKS, instance_id=instance_id, urls=Jsonb(urls), secret=secrets.token_hex(32))
    except psycopg.errors.ForeignKeyViolation:
        raise InstanceNotFound("instance not found") from None
    assert row is not None
    return row


def settings(core: Core, instance_id: UUID) -> dict[str, Any] | None:
    """`{secret, previous_secret_until, urls: {event: url}}`, or None if it never had any."""
    return core.one(queries.WEBHOOK_SETTINGS, instance_id=instance_id)


def deliveries(core: Core, instance_id: UUID, limit: int) -> list[dict[str, Any]]:
    """The instance's latest deliveries, newest first, with their attempts and last answer."""
    return core.all(queries.WEBHOOK_DELIVERIES, instance_id=instance_id, limit=limit)


def due(core: Core, *, busy: list[UUID], blocked: list[str], limit: int = 100) -> list[tuple[UUID, str]]:
    """Instances with a delivery due, and the receiver (origin) of each one's first due delivery;
    leaving out the instances in `busy` and the receivers in `blocked` (at their concurrency cap
    or backed off), so that those never crowd the others out of the answer."""
    rows = core.all(queries.DUE_WEBHOOK_INSTANCES, busy=busy, blocked=blocked, limit=limit)
    return [(r["instance_id"], r["origin"]) for r in rows]


#: Claims of one delivery that never got an outcome (the poster died mid-post) before it is
#: given up: a delivery that kills its poster must not kill the next one too.
MAX_UNFINISHED_ATTEMPTS = 3


def retry_policy(*, attempts: int, age_s: float, retry_for_s: float, unfinished: int = 0) -> tuple[bool, float, str]:
    """The one retry policy of deliveries, after `attempts` failed tries of a delivery `age_s`
    old: (give it up?, seconds before the next try, why it is given up). Tries go 1 s, 2 s, 4 s …
    up to 5 minutes apart for `WEBHOOK_RETRY_FOR`; a delivery whose posts never finish is given
    up after `MAX_UNFINISHED_ATTEMPTS` of them."""
    backoff = float(min(2 ** max(attempts - 1, 0), 300))
    if unfinished >= MAX_UNFINISHED_ATTEMPTS:
        return True, backoff, f"given up: {unfinished} posts never finished (the worker posting it stopped)"
    if age_s >= retry_for_s:
        return True, backoff, f"given up after {attempts} attempts in {retry_for_s:g} s"
    return False, backoff, ""


def claim(core: Core, instance_id: UUID, hold_s: float) -> dict[str, Any] | None:
    """The instance's next delivery, claimed for one attempt (counted now, before the POST), if
    it is due and no other poster has the instance; held, not due, for `hold_s`."""
    return core.one(queries.WEBHOOK_CLAIM, instance_id=instance_id, hold_s=hold_s)


def delivered(core: Core, claimed: dict[str, Any], status: int) -> bool:
    """Record the claimed attempt's success (the posters are woken for the next delivery);
    False when the claim was no longer ours."""
    return _outcome(core, claimed, status=status, error=None, delivered=True, backoff_s=0, give_up=False)


def failed(core: Core, claimed: dict[str, Any], *, status: int | None, error: str, backoff_s: float,
           give_up: bool) -> bool:
    """Record the claimed attempt's failure: tried again after `backoff_s`, or given up (the
    instance's next delivery then goes at once)."""
    return _outcome(core, claimed, status=status, error=error[:500], delivered=False, backoff_s=backoff_s,
                    give_up=give_up)


def _outcome(core: Core, claimed: dict[str, Any], **outcome: Any) -> bool:
    row = core.one(queries.WEBHOOK_OUTCOME, id=claimed["id"], attempt=claimed["attempts"], **outcome)
    return bool(row and row["recorded"])


def rotate_secret(core: Core, instance_id: UUID, grace_s: float) -> dict[str, Any]:
    """A new signing secret for the instance; the previous one stays valid beside it (deliveries
    carry both signatures) for `grace_s`, so receivers can switch without losing a delivery."""
    try:
        row = core.one(queries.ROTATE_WEBHOOK_SECRET, instance_id=instance_id, secret=secrets.token_hex(32),
                       grace_s=grace_s)
    except psycopg.errors.ForeignKeyViolation:
        raise InstanceNotFound("instance not found") from None
    assert row is not None
    return row
