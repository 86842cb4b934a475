"""What the API shows: one message with its history, a page of a queue, a queue's stats, and
an instance's connection as the worker holding its session last saw it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from service.core import queries
from service.core.context import Core
from service.core.errors import InstanceNotFound, MessageNotFound
from service.core.models import QueuedMessage


def message(core: Core, zaap_id: str, *, with_events: bool = False) -> QueuedMessage:
    row = core.one(queries.GET_MESSAGE, zaap_id=zaap_id)
    if row is None:
        raise MessageNotFound("message not found")
    job = QueuedMessage.from_row(row)
    if with_events:
        job.events = core.all(queries.MESSAGE_EVENTS, zaap_id=zaap_id)
    return job


def queue_page(core: Core, instance_id: UUID, limit: int = 50, offset: int = 0,
               status: str | None = None) -> tuple[list[QueuedMessage], int]:
    """A page of an instance's messages in sequence order, and how many there are."""
    params = {"instance_id": instance_id, "status": status, "limit": limit, "offset": offset}
    rows = core.all(queries.LIST_MESSAGES, **params)
    total = core.one(queries.COUNT_MESSAGES, **params)
    return [QueuedMessage.from_row(r) for r in rows], int(total["total"]) if total else 0


def pending_after(core: Core, instance_id: UUID, after: int, limit: int) -> list[QueuedMessage]:
    """The instance's messages still to send whose sequence follows `after`, in order."""
    rows = core.all(queries.PENDING_AFTER, instance_id=instance_id, after=after, limit=limit)
    return [QueuedMessage.from_row(r) for r in rows]


def queue_stats(core: Core, instance_id: UUID) -> dict[str, Any]:
    row = core.one(queries.QUEUE_STATS, instance_id=instance_id)
    if row is None:
        raise InstanceNotFound("instance not found")
    return row


def queue_depth(core: Core, instance_id: UUID) -> int:
    """How many of the instance's messages are still to send (scheduled to sending, retryable)."""
    row = core.one(queries.QUEUE_DEPTH, instance_id=instance_id)
    return int(row["depth"]) if row else 0


def connection(core: Core, instance_id: UUID) -> dict[str, Any]:
    """The instance's row, with `owner_alive`: whether the worker that recorded its connection
    state still lives (if not, that state is stale)."""
    row = core.one(queries.INSTANCE_STATUS, id=instance_id, ttl_s=core.settings.message_queue_heartbeat_ttl)
    if row is None:
        raise InstanceNotFound("instance not found")
    return row
