"""Accept one message: the send routes' one database call (sql `wmq_enqueue`, or
`wmq_enqueue_once` under an idempotency key).

One transaction: the instance lock (I1), the next sequence and the chained due time, the insert,
and the dispatch if the message is the head (I2); with a key, the key's row and the first answer
too. A 2xx answer means all of it is committed.

A large payload (inline media: over LARGE_PAYLOAD) is serialised in a thread, and its transaction
first takes the instance lock and sums the stored bytes of the instance's unfinished payloads:
beyond MESSAGE_QUEUE_MAX_PENDING_BYTES it is refused (413) and nothing is stored. The common
small message keeps its one statement.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from json.encoder import encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.core import queries
from service.core.context import Core
from service.core.errors import (
    DueTimeTooFar,
    IdempotencyKeyReused,
    InstanceNotFound,
    MessageNotFound,
    PendingBytesExceeded,
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


def _hashed_fields(request: MessageRequest) -> dict[str, Any]:
    """What makes two requests "the same" under one idempotency key: every field that is stored."""
    return {"type": request.message_type, "phone": request.phone, "payload": request.payload,
            "delay": request.delay_message_ms, "typing": request.delay_typing_ms,
            "at": request.scheduled_for.isoformat() if request.scheduled_for else None}


def request_hash(request: MessageRequest) -> str:
    return hashlib.sha256(json.dumps(_hashed_fields(request), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


#: A payload whose JSON may be larger than this (inline media) is serialised in a thread, and
#: checked against MESSAGE_QUEUE_MAX_PENDING_BYTES; smaller ones go as they always did.
LARGE_PAYLOAD = 64 * 1024
#: Long strings are escaped this many characters at a time: one C call over 16 MiB holds the GIL
#: for ~0.1 s, which the API's event loop would wait out even with the call in a thread.
_SLICE = 1 << 20


def larger_than(value: Any, limit: int) -> bool:
    """Whether `value`'s JSON is surely longer than `limit` characters; walks it only until then
    (each item counts at least 2, so at most `limit` / 2 items are looked at)."""
    stack, size = [value], 0
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            size += 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            size += 2
            stack.extend(item)
        else:
            size += 4
        if size > limit:
            return True
    return False


def json_parts(value: Any, *, ascii: bool = True, sort_keys: bool = False) -> Iterator[str]:
    """`json.dumps(value, ensure_ascii=ascii, sort_keys=sort_keys)` in pieces, whose join is the
    same text: a string longer than _SLICE (in objects, at any depth) is escaped a slice at a time."""
    if isinstance(value, str) and len(value) > _SLICE:
        escape = encode_basestring_ascii if ascii else encode_basestring
        yield '"'
        for start in range(0, len(value), _SLICE):
            yield escape(value[start:start + _SLICE])[1:-1]
        yield '"'
    elif isinstance(value, dict) and value:
        items = sorted(value.items()) if sort_keys else value.items()
        for n, (key, item) in enumerate(items):
            yield ("{" if n == 0 else ", ") + json.dumps(key, ensure_ascii=ascii) + ": "
            yield from json_parts(item, ascii=ascii, sort_keys=sort_keys)
        yield "}"
    else:
        yield json.dumps(value, ensure_ascii=ascii, sort_keys=sort_keys)


def _serialised(request: MessageRequest, keyed: bool) -> tuple[bytes, str | None]:
    """A large payload's JSON as psycopg would send it, and, under a key, the request's hash (the
    same as `request_hash`); run in a thread, each C call short."""
    digest = None
    if keyed:
        hashed = hashlib.sha256()
        for part in json_parts(_hashed_fields(request), ascii=False, sort_keys=True):
            hashed.update(part.encode())
        digest = hashed.hexdigest()
    return "".join(json_parts(request.payload)).encode(), digest


def _already(encoded: bytes) -> Callable[[Any], bytes]:
    """A `dumps` for psycopg's Jsonb that gives back what was serialised already."""
    return lambda _: encoded


async def enqueue(core: Core, instance_id: UUID, request: MessageRequest,
                  idempotency_key: str | None = None) -> Enqueued:
    """Queue `request` behind the instance's other messages; on the API's event loop. With an
    idempotency key already used for the same request within a day, the first answer comes back
    and nothing is stored. A large payload that would take the instance's unfinished messages
    over MESSAGE_QUEUE_MAX_PENDING_BYTES is refused (PendingBytesExceeded), nothing stored."""
    zaap_id = uuid4().hex
    route = core.route
    encoded: bytes | None = None
    if larger_than(request.payload, LARGE_PAYLOAD):
        encoded, digest = await asyncio.to_thread(_serialised, request, idempotency_key is not None)
        payload = Jsonb(request.payload, dumps=_already(encoded))
    else:
        digest = request_hash(request) if idempotency_key is not None else None
        payload = Jsonb(request.payload)
    keyed = {} if idempotency_key is None else {"key": idempotency_key, "hash": digest, "ttl": IDEMPOTENCY_TTL}
    statement = queries.ENQUEUE_ONCE if keyed else queries.ENQUEUE
    params = dict(
        **keyed,
        zaap_id=zaap_id,
        instance_id=instance_id,
        message_type=request.message_type,
        phone=request.phone,
        payload=payload,
        delay_ms=request.delay_message_ms,
        typing_ms=request.delay_typing_ms,
        jitter_ms=jitter_ms(core),
        scheduled_for=request.scheduled_for,
        max_attempts=core.settings.message_queue_max_job_attempts,
        queue=route.queue,
        actor=route.actor,
    )
    try:
        if encoded is None:
            row = await core.one_async(statement, **params)
        else:
            row = await _enqueue_within_cap(core, instance_id, len(encoded), idempotency_key, statement, params)
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
    stored = await core.one_async(queries.MESSAGE_PAYLOAD, zaap_id=zaap_id)  # GET_MESSAGE's is as shown
    if stored is None:
        raise MessageNotFound("message not found")
    enqueued = await enqueue(core, old.instance_id, MessageRequest(
        phone=old.phone, message_type=old.message_type, payload=stored["payload"],
        delay_message_ms=old.delay_message_ms, delay_typing_ms=old.delay_typing_ms))
    logger.info("discarded message queued again as a new one", extra={
        "zaap_id": enqueued.zaap_id, "instance_id": str(old.instance_id), "sequence": enqueued.sequence,
        "retry_of": zaap_id})
    return enqueued


async def _enqueue_within_cap(core: Core, instance_id: UUID, size: int, key: str | None, statement: str,
                              params: dict[str, Any]) -> dict[str, Any] | None:
    """The enqueue of a large payload: in one transaction, the instance lock and its unfinished
    payloads' stored bytes, then (if `size` more stays within the cap) the enqueue itself."""
    cap = core.settings.message_queue_max_pending_bytes
    assert core.async_pool is not None, "this Core has no async pool (the API's send path has one)"
    async with core.async_pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries.PENDING_PAYLOAD_BYTES, {"instance_id": instance_id, "key": key,
                                                          "ttl": IDEMPOTENCY_TTL})
        found = await cur.fetchone()
        pending = None if found is None else found["bytes"]
        if pending is None:
            raise InstanceNotFound("instance not found")
        if pending + size > cap:
            raise PendingBytesExceeded(
                f"this instance's messages waiting to be sent hold {pending} bytes; {size} more would pass "
                f"MESSAGE_QUEUE_MAX_PENDING_BYTES ({cap} bytes): send the media by URL, or once some are sent",
                limit=cap)
        await cur.execute(statement, params)
        return await cur.fetchone()
