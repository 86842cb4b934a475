"""Control from the API: cancel one message or a whole queue, pause and resume an instance, and
record connection changes. Each is one SQL function (service/sql/functions/50_control.sql) that takes
the instance lock and dispatches whatever becomes the head."""

from __future__ import annotations

import logging
from uuid import UUID

from service.core import queries
from service.core.context import Core
from service.core.errors import CancelRefused, InstanceNotFound, MessageNotFound

logger = logging.getLogger("wmq.core")


def cancel(core: Core, zaap_id: str) -> str:
    """Cancel one pending message; returns the status it had. A cancelled head lets the next go."""
    row = core.one(queries.CANCEL, zaap_id=zaap_id, **core.route.params())
    if row is None or row["previous_status"] is None:
        raise MessageNotFound("message not found")
    if not row["cancelled"]:
        raise CancelRefused(row["previous_status"])
    logger.info("message cancelled", extra={
        "zaap_id": zaap_id, "instance_id": str(row["instance_id"]), "sequence": row["sequence"], "status": "cancelled",
        "attempt": row["attempts"], "scheduled_at": row["scheduled_at"].isoformat(),
        "previous_status": row["previous_status"]})
    return str(row["previous_status"])


def cancel_all(core: Core, instance_id: UUID) -> int:
    """Cancel every pending message of one instance; a message being sent finishes."""
    row = core.one(queries.CANCEL_ALL, instance_id=instance_id, **core.route.params())
    if row is None or row["count"] is None:
        raise InstanceNotFound("instance not found")
    logger.info("queue cancelled", extra={"instance_id": str(instance_id), "count": row["count"]})
    return int(row["count"])


def set_paused(core: Core, instance_id: UUID, paused: bool) -> None:
    """Pause (keep accepting, dispatch nothing) or resume (dispatch the head again)."""
    row = core.one(queries.SET_PAUSED, id=instance_id, paused=paused, **core.route.params())
    if not row or not row["ok"]:
        raise InstanceNotFound("instance not found")
    logger.info("instance paused" if paused else "instance resumed", extra={"instance_id": str(instance_id)})


def set_connection(core: Core, instance_id: UUID, state: str, detail: str | None = None) -> None:
    """Record a connection change; on `connected`, a snoozed head goes at once."""
    row = core.one(queries.SET_CONNECTION, instance_id=instance_id, state=state, detail=detail,
                   **core.route.params())
    if not row or not row["ok"]:
        raise InstanceNotFound("instance not found")
    logger.info("connection changed", extra={"instance_id": str(instance_id), "state": state})
