"""Accept one message: the send routes' one database call (sql `wmq_enqueue`).

One transaction: the instance lock (I1), the next sequence and the chained due time, the insert,
and the dispatch if the message is the head (I2). A 2xx answer means all of it is committed.
"""

from __future__ import annotations

import logging
import random
from uuid import UUID, uuid4

import psycopg
from psycopg.types.json import Jsonb

from service.core import queries
from service.core.context import Core
from service.core.errors import DueTimeTooFar, InstanceNotFound
from service.core.models import Enqueued, MessageRequest

logger = logging.getLogger("wmq.core")


def jitter_ms(core: Core) -> int:
    """The random extra spacing drawn once per message (MESSAGE_QUEUE_MIN/MAX_JITTER)."""
    return round(random.uniform(core.settings.message_queue_min_jitter, core.settings.message_queue_max_jitter) * 1000)


async def enqueue(core: Core, instance_id: UUID, request: MessageRequest) -> Enqueued:
    """Queue `request` behind the instance's other messages; on the API's event loop."""
    zaap_id = uuid4().hex
    route = core.route
    try:
        row = await core.one_async(
            queries.ENQUEUE,
            zaap_id=zaap_id,
            instance_id=instance_id,
            message_type=request.message_type,
            phone=request.phone,
            payload=Jsonb(request.payload),
            delay_ms=request.delay_message_ms,
            typing_ms=request.delay_typing_ms,
            jitter_ms=jitter_ms(core),
            scheduled_for=request.scheduled_for,
            max_attempts=core.settings.message_queue_max_job_attempts,
            queue=route.queue,
            actor=route.actor,
        )
    except psycopg.errors.NoDataFound:  # removed between authentication and enqueue
        raise InstanceNotFound("instance not found") from None
    except (psycopg.errors.DatetimeFieldOverflow, psycopg.errors.IntervalFieldOverflow):
        raise DueTimeTooFar("the delays of this instance's queue chain more than 100 years ahead") from None
    assert row is not None
    enqueued = Enqueued(zaap_id=zaap_id, instance_id=instance_id, sequence=row["sequence"],
                        scheduled_at=row["scheduled_at"], status=row["status"])
    logger.info("message enqueued", extra={
        "zaap_id": zaap_id, "instance_id": str(instance_id), "sequence": enqueued.sequence,
        "message_type": request.message_type, "scheduled_at": enqueued.scheduled_at.isoformat(),
    })
    return enqueued
