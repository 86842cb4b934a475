"""Accept one message: the send routes' one database call (sql `wmq_enqueue`, or
`wmq_enqueue_once` under an idempotency key).

One transaction: the instance lock (I1), the next sequence and the chained due time, the insert,
and the dispatch if the message is the head (I2); with a key, the key's row and the first answer
too. A 2xx answer means all of it is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from datetime import timedelta
from uuid import UUID, uuid4

import psycopg
from psycopg.types.json import Jsonb

from service.core import queries
from service.core.context import Core
from service.core.errors import (
    DueTimeTooFar,
    IdempotencyKeyReused,
    InstanceNotFound,
    MessageNotFound,
    RateLimited,
    RetryRefused,
)
from service.core.models import Enqueued, MessageRequest, QueuedMessage

logger = logging.getLogger("wmq.core")


def jitter_ms(core: Core) -> int:
    """The random extra spacing drawn once per message (MESSAGE_QUEUE_MIN/MAX_JITTER)."""
    return round(random.uniform(core.settings.message_queue_min_jitter, core.settings.message_queue_max_jitter) * 1000)


#: How long an idempotency key's first answer is given back.
IDEMPOTENCY_TTL = timedelta(hours=24)


def request_hash(request: MessageRequest) -> str:
    """What makes two requests "the same" under one idempotency key: every field that is stored."""
    fields = {"type": request.message_type, "phone": request.phone, "payload": request.payload,
              "delay": request.delay_message_ms, "typing": request.delay_typing_ms,
              "at": request.scheduled_for.isoformat() if request.scheduled_for else None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


async def enqueue(core: Core, instance_id: UUID, request: MessageRequest,
                  idempotency_key: str | None = None) -> Enqueued:
    """Queue `request` behind the instance's other messages; on the API's event loop. With an
    idempotency key already used for the same request within a day, the first answer comes back
    and nothing is stored."""
    zaap_id = uuid4().hex
    route = core.route
    keyed = {} if idempotency_key is None else {"key": idempotency_key, "hash": request_hash(request),
                                                 "ttl": IDEMPOTENCY_TTL}
    try:
        row = await core.one_async(
            queries.ENQUEUE_ONCE if keyed else queries.ENQUEUE,
            **keyed,
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
    except psycopg.Error as error:
        if error.sqlstate == "WQ422":
            raise IdempotencyKeyReused("Idempotency-Key was already used with another request") from None
        if error.sqlstate == "WQ429":
            wait, cap = (error.diag.message_detail or "60,0").split(",")
            raise RateLimited(f"this instance accepts at most {cap} messages a minute; retry in {wait}s",
                              retry_after=int(wait)) from None
        raise
    assert row is not None
    enqueued = Enqueued(zaap_id=row.get("zaap_id", zaap_id), instance_id=instance_id, sequence=row["sequence"],
                        scheduled_at=row["scheduled_at"], status=row["status"], replayed=bool(row.get("replayed")))
    if enqueued.replayed:
        logger.info("idempotent send answered again", extra={
            "zaap_id": enqueued.zaap_id, "instance_id": str(instance_id), "sequence": enqueued.sequence})
        return enqueued
    logger.info("message enqueued", extra={
        "zaap_id": zaap_id, "instance_id": str(instance_id), "sequence": enqueued.sequence, "status": enqueued.status,
        "attempt": 0, "message_type": request.message_type, "scheduled_at": enqueued.scheduled_at.isoformat(),
    })
    return enqueued


async def retry_as_new(core: Core, zaap_id: str) -> Enqueued:
    """A discarded message queued again as a new message (a new zaapId) at the tail of its
    instance's queue, with its delays: the old one stays discarded, with its history, and the
    messages queued since it failed keep their place ahead of the copy."""
    row = await core.one_async(queries.GET_MESSAGE, zaap_id=zaap_id)
    if row is None:
        raise MessageNotFound("message not found")
    old = QueuedMessage.from_row(row)
    if old.status != "discarded":
        raise RetryRefused(old.status)
    enqueued = await enqueue(core, old.instance_id, MessageRequest(
        phone=old.phone, message_type=old.message_type, payload=old.payload,
        delay_message_ms=old.delay_message_ms, delay_typing_ms=old.delay_typing_ms))
    logger.info("discarded message queued again as a new one", extra={
        "zaap_id": enqueued.zaap_id, "instance_id": str(old.instance_id), "sequence": enqueued.sequence,
        "retry_of": zaap_id})
    return enqueued
