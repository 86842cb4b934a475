"""Webhooks as the core sees them: each instance's URLs and signing secret, its deliveries, and
the steps of posting them (workers/webhooks.py posts; service/sql/functions/70_webhooks.sql writes the
deliveries in the transactions of the changes they report).

A delivery is posted until the receiver answers 2xx, retried with exponential backoff for
`WEBHOOK_RETRY_FOR`, then given up; deliveries of one instance go out one at a time, in order.
"""

from __future__ import annotations

import secrets
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from service.core import queries
from service.core.context import Core
from service.core.errors import InstanceNotFound

#: The events an instance may want, by Z-API's route name (`update-webhook-…`).
EVENTS = {"delivery": "delivery_url", "message-status": "message_status_url",
          "connected": "connected_url", "disconnected": "disconnected_url"}


def configure(core: Core, instance_id: UUID, urls: dict[str, str | None]) -> dict[str, Any]:
    """Set (or clear, with None) the URL of each event named in `urls`; the others keep theirs.
    The signing secret is made with the first setting and kept."""
    params: dict[str, Any] = {"instance_id": instance_id, "secret": secrets.token_hex(32)}
    for event, column in EVENTS.items():
        params[column] = urls.get(event)
        params[f"set_{column.removesuffix('_url')}"] = event in urls
    try:
        row = core.one(queries.SET_WEBHOOKS, **params)
    except psycopg.errors.ForeignKeyViolation:
        raise InstanceNotFound("instance not found") from None
    assert row is not None
    return row


def settings(core: Core, instance_id: UUID) -> dict[str, Any] | None:
    return core.one(queries.WEBHOOK_SETTINGS, instance_id=instance_id)


def deliveries(core: Core, instance_id: UUID, limit: int) -> list[dict[str, Any]]:
    """The instance's latest deliveries, newest first, with their attempts and last answer."""
    return core.all(queries.WEBHOOK_DELIVERIES, instance_id=instance_id, limit=limit)


def due_instances(core: Core, limit: int = 100) -> list[UUID]:
    return [r["instance_id"] for r in core.all(queries.DUE_WEBHOOK_INSTANCES, limit=limit)]


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 1, 2, 4 … up to 5 minutes."""
    return float(min(2 ** max(attempts - 1, 0), 300))


class Posting:
    """One delivery being posted: the instance's row lock is held (its transaction is open)
    until `done` or `failed`, so no other poster can post the instance's next one before it."""

    def __init__(self, conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
        self.conn = conn
        self.row = row

    def done(self, status: int) -> None:
        self.conn.execute(queries.WEBHOOK_DELIVERED, {"id": self.row["id"], "status": status})

    def failed(self, status: int | None, error: str, give_up: bool) -> None:
        self.conn.execute(queries.WEBHOOK_FAILED, {
            "id": self.row["id"], "status": status, "error": error[:500],
            "backoff_s": backoff(self.row["attempts"] + 1), "give_up": give_up})


def head(conn: psycopg.Connection[Any], instance_id: UUID) -> Posting | None:
    """The instance's next delivery, if it is due and no other poster has the instance. Call in
    a transaction: the lock lasts as long as it."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries.WEBHOOK_HEAD, {"instance_id": instance_id}).fetchone()
    return Posting(conn, row) if row else None
