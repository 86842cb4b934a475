"""Instances (WhatsApp accounts) and their queues: create, read, list, remove."""

from __future__ import annotations

import logging
import secrets
from uuid import UUID, uuid4

import psycopg

from service.core import queries
from service.core.context import Core
from service.core.errors import InstanceHasPending, InstanceNotFound, UnknownTransport
from service.core.models import Instance
from service.settings import min_send_interval

logger = logging.getLogger("wmq.core")


def create(core: Core, *, name: str = "", client_token: str | None = None, transport: str | None = None,
           instance_id: UUID | None = None, token: str | None = None, max_per_minute: int | None = None) -> Instance:
    """A new instance and its (empty) queue. `transport` defaults to WHATSAPP_TRANSPORT and must
    be a row of the `transports` table."""
    try:
        row = core.one(
            queries.INSERT_INSTANCE,
            id=instance_id or uuid4(),
            token=token or secrets.token_hex(16),
            client_token=client_token,
            name=name,
            transport=core.settings.whatsapp_transport if transport is None else transport,
            min_send_interval_ms=round(min_send_interval(core.settings) * 1000),
            max_per_minute=max_per_minute or core.settings.message_queue_max_per_minute,
        )
    except psycopg.errors.ForeignKeyViolation:
        row = None
    if row is None:  # no such row in `transports`
        raise UnknownTransport(f"unknown transport {transport!r}")
    instance = Instance.from_row(row)
    logger.info("instance added", extra={"instance_id": str(instance.id)})
    return instance


def remove(core: Core, instance_id: UUID, *, force: bool = False) -> int:
    """Delete an instance with its queue and history; its queued broker messages go too. One
    with messages still to send only with `force` (they are dropped); returns how many were."""
    row = core.one(queries.DELETE_INSTANCE, id=instance_id, force=force)
    if not row or row["pending"] is None:
        raise InstanceNotFound("instance not found")
    if row["pending"] and not force:
        raise InstanceHasPending(row["pending"])
    logger.info("instance removed", extra={"instance_id": str(instance_id), "dropped": row["pending"]})
    return int(row["pending"])


def rotate_token(core: Core, instance_id: UUID) -> Instance:
    """A new token for the instance; the old one stops working (at once on this API process, and
    within the credentials cache's few seconds on others)."""
    row = core.one(queries.ROTATE_TOKEN, id=instance_id, token=secrets.token_hex(16))
    logger.info("instance token rotated", extra={"instance_id": str(instance_id)})
    return _instance(row)


def get(core: Core, instance_id: UUID) -> Instance:
    return _instance(core.one(queries.GET_INSTANCE, id=instance_id))


async def get_async(core: Core, instance_id: UUID) -> Instance:
    """`get` on the API's event loop (the send path authenticates without a thread hop)."""
    return _instance(await core.one_async(queries.GET_INSTANCE, id=instance_id))


def list_all(core: Core) -> list[Instance]:
    return [Instance.from_row(r) for r in core.all(queries.LIST_INSTANCES)]


def transport_of(core: Core, instance_id: UUID) -> str | None:
    """The transport an instance was created with (None once it is removed)."""
    row = core.one(queries.TRANSPORT_OF, id=instance_id)
    return None if row is None else str(row["transport"])


def _instance(row: dict[str, object] | None) -> Instance:
    if row is None:
        raise InstanceNotFound("instance not found")
    return Instance.from_row(row)
