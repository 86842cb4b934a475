"""The HTTP endpoints: plain async functions that validate, call the core, and shape JSON.

The core is synchronous (it is shared with the worker threads); calls to it run in Starlette's
thread pool, except the send path's, which runs on the event loop (`enqueue`). A request body
over INLINE_PARSE_BYTES is parsed and validated in the thread pool too (`parsed`).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import metrics, schemas
from service.api.auth import UNAUTHORIZED, authenticated, instance_id_from, require_admin
from service.api.schemas import ValidationError
from service.core import control, enqueue, instances, reads, sessions, webhooks
from service.core.context import Core
from service.core.errors import InstanceNotFound
from service.core.message_types import MessageType
from service.core.models import Instance, MessageRequest, QueuedMessage
from service.db import pending_migrations

T = TypeVar("T")

logger = logging.getLogger("wmq.api")

#: A request body up to this size is parsed and validated on the event loop (microseconds); a
#: larger one (inline media, up to API_MAX_BODY_BYTES) in a thread, so the loop keeps answering.
INLINE_PARSE_BYTES = 64 * 1024


def core(request: Request) -> Core:
    return request.app.state.core  # type: ignore[no-any-return]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


async def parsed(raw: bytes, parse: Callable[..., T], *args: Any) -> T:
    """`parse(*args)` of a request body `raw`: inline when it is small, in a thread when it is
    larger than INLINE_PARSE_BYTES."""
    if len(raw) > INLINE_PARSE_BYTES:
        return await run_in_threadpool(parse, *args)
    return parse(*args)


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's body as a JSON object (`optional`: an empty body is `{}`), parsed as `parsed` says."""
    raw = await request.body()
    if optional and not raw.strip():
        return {}
    return await parsed(raw, schemas.parse_json_object, raw)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def message_json(job: QueuedMessage) -> dict[str, Any]:
    return {
        "zaapId": job.zaap_id,
        "messageId": job.whatsapp_message_id or job.zaap_id,
        "id": job.zaap_id,
        "instanceId": str(job.instance_id),
        "sequence": job.sequence,
        "status": job.status,
        "messageType": job.message_type,
        "phone": job.phone,
        "content": job.payload,
        "delayMessage": job.delay_message_ms / 1000,
        "delayTyping": job.delay_typing_ms / 1000,
        "scheduledAt": iso(job.scheduled_at),
        "availableAt": iso(job.available_at),
        "position": job.position,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "lastError": job.last_error,
        "whatsappMessageId": job.whatsapp_message_id,
        "enqueuedAt": iso(job.enqueued_at),
        "startedAt": iso(job.started_at),
        "sentAt": iso(job.sent_at),
        "finishedAt": iso(job.finished_at),
        "deliveredAt": iso(job.delivered_at),
        "readAt": iso(job.read_at),
        "playedAt": iso(job.played_at),
    }


def instance_json(instance: Instance, *, with_token: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(instance.id),
        "name": instance.name,
        "transport": instance.transport,
        "paused": instance.paused,
        "connectionState": instance.connection_state,
        "createdAt": iso(instance.created_at),
    }
    if with_token:
        data["token"] = instance.token
        data["clientToken"] = instance.client_token
    return data


# -- health -----------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when both pools the API uses (the threads' and the send path's) reach the database
    and the schema is current."""
    async def check_async_pool() -> None:
        assert core(request).async_pool is not None
        async with core(request).async_pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")

    def check() -> list[str]:
        with core(request).pool.connection(timeout=5) as conn:
            return pending_migrations(conn)

    # Anyone may ask: the answer names no host, port, path or driver message (the log does).
    try:
        await check_async_pool()
        pending = await call(check)
    except Exception as error:
        logger.warning("not ready: the database is unreachable", extra={"error": f"{type(error).__name__}: {error}"})
        return JSONResponse({"status": "unavailable", "error": "database unreachable"}, 503)
    if pending:
        logger.warning("not ready: migrations pending", extra={"pending": pending})
        return JSONResponse({"status": "unavailable", "error": "migrations pending"}, 503)
    return JSONResponse({"status": "ready"})


# -- instances (admin) ------------------------------------------------------------------------


async def create_instance(request: Request) -> Response:
    require_admin(request)
    data = await json_object(request, optional=True)
    name = schemas.optional_text(data, "name") or ""
    client_token = schemas.optional_text(data, "clientToken")
    transport = schemas.optional_text(data, "transport")
    cap = data.get("maxMessagesPerMinute")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= 1_000_000):
        raise ValidationError("maxMessagesPerMinute", "maxMessagesPerMinute must be an integer from 1 to 1000000")
    instance = await call(instances.create, core(request), name=name, client_token=client_token,
                          transport=transport, max_per_minute=cap)
    return JSONResponse(instance_json(instance, with_token=True), status_code=201)


async def list_instances(request: Request) -> Response:
    require_admin(request)
    found = await call(instances.list_all, core(request))
    return JSONResponse([instance_json(i) for i in found])


async def rotate_token(request: Request) -> Response:
    """A new token for the instance (admin); the old one stops working."""
    require_admin(request)
    instance = await call(instances.rotate_token, core(request), instance_id_from(request))
    request.app.state.instances.forget(instance.id)
    return JSONResponse(instance_json(instance, with_token=True))


async def delete_instance(request: Request) -> Response:
    """Remove an instance: refused (409) while it has messages to send, unless `?force=true`,
    which drops them and says how many."""
    require_admin(request)
    force = request.query_params.get("force", "false")
    if force not in ("true", "false"):
        raise ValidationError("force", "force must be true or false")
    dropped = await call(instances.remove, core(request), instance_id_from(request), force=force == "true")
    return JSONResponse({"removed": True, "cancelled": dropped})


# -- sending ----------------------------------------------------------------------------------


def message_of(message_type: MessageType, raw: bytes, path_params: dict[str, Any]) -> MessageRequest:
    """A send's body as the core's request: parsed and validated (`parsed` says where)."""
    body = schemas.parse_json_object(raw)
    # A path parameter of the route (send-document/{extension}) is a field of the message.
    body.update(schemas.path_fields(path_params))
    return schemas.message(message_type, body)


def send_route(message_type: MessageType) -> Callable[[Request], Any]:
    """The send endpoint of one message type: validate, enqueue (one commit), then answer."""

    async def endpoint(request: Request) -> Response:
        instance = await authenticated(request, cached=True)
        raw = await request.body()
        message = await parsed(raw, message_of, message_type, raw, request.path_params)
        key = schemas.idempotency_key(request.headers)
        try:
            with metrics.ENQUEUE_SECONDS.labels(message_type.name).time():
                enqueued = await enqueue.enqueue(core(request), instance.id, message, idempotency_key=key)
        except InstanceNotFound:  # removed since its credentials were cached: as if unknown
            raise ValidationError("token", UNAUTHORIZED, status=401) from None
        if not enqueued.replayed:
            metrics.ACCEPTED.labels(message_type.name).inc()
        return JSONResponse({
            "zaapId": enqueued.zaap_id,
            "messageId": enqueued.zaap_id,
            "id": enqueued.zaap_id,
            "status": enqueued.status,
            "sequence": enqueued.sequence,
            "scheduledFor": iso(enqueued.scheduled_at),
            # As the instance's record said a few seconds ago (its credentials cache): a caller
            # learns at once that the phone is offline and its message will wait.
            "whatsAppStatus": {"connected": instance.connection_state == "connected",
                               "reason": "connected" if instance.connection_state == "connected" else
                               instance.connection_detail or instance.connection_state},
        }, headers={"Idempotent-Replayed": "true"} if enqueued.replayed else None)

    endpoint.__name__ = f"send_{message_type.name.replace('-', '_')}"
    return endpoint


# -- the queue --------------------------------------------------------------------------------


def queue_entry(job: QueuedMessage) -> dict[str, Any]:
    """A message as the queue routes list it: ours, and the keys of Z-API's queue answer."""
    text = job.payload.get("message") or job.payload.get("caption") or job.payload.get("title") or ""
    return {
        **message_json(job),
        "_id": job.zaap_id, "ZaapId": job.zaap_id, "MessageId": job.whatsapp_message_id or job.zaap_id,
        "InstanceId": str(job.instance_id), "Phone": job.phone, "Message": text if isinstance(text, str) else "",
        "DelayMessage": job.delay_message_ms // 1000, "DelayTyping": job.delay_typing_ms // 1000,
        "Created": int(job.enqueued_at.timestamp() * 1000), "CreatedAt": iso(job.enqueued_at), "IsTrial": False,
    }


async def list_queue(request: Request) -> Response:
    """The instance's messages in sequence order: by default those still to send (Z-API's
    queue); `?status=all` or one status for the others still retained."""
    instance = await authenticated(request)
    limit, offset = schemas.page(request.query_params)
    status = schemas.queue_filter(request.query_params)
    jobs, total = await call(reads.queue_page, core(request), instance.id, limit, offset, status)
    return JSONResponse({
        "size": total, "total": total, "limit": limit, "offset": offset, "page": offset // limit + 1,
        "pageSize": limit, "messages": [queue_entry(j) for j in jobs],
    })


async def queue_cursor(request: Request) -> Response:
    """Z-API's `POST queue`: the messages still to send, `pageSize` at a time, each answer's
    `pagingState` fetching the next page while `hasMore`."""
    instance = await authenticated(request)
    size, after = schemas.cursor_page(await json_object(request, optional=True))
    jobs = await call(reads.pending_after, core(request), instance.id, after, size + 1)
    more = len(jobs) > size
    return JSONResponse({"messages": [queue_entry(j) for j in jobs[:size]], "hasMore": more,
                         "pagingState": schemas.paging_state(jobs[size - 1].sequence) if more else None})


async def queue_count(request: Request) -> Response:
    """Z-API's `GET queue/count`: how many messages are still to send."""
    instance = await authenticated(request)
    return JSONResponse({"count": await call(reads.queue_depth, core(request), instance.id)})


async def queue_stats(request: Request) -> Response:
    instance = await authenticated(request)
    stats = await call(reads.queue_stats, core(request), instance.id)
    return JSONResponse({k: (iso(v) if isinstance(v, datetime) else str(v) if isinstance(v, UUID) else v)
                         for k, v in stats.items()})


async def get_queue_message(request: Request) -> Response:
    instance = await authenticated(request)
    job = await call(reads.message, core(request), request.path_params["zaap_id"], with_events=True)
    if job.instance_id != instance.id:
        raise ValidationError("zaapId", "message not found", status=404)
    data = message_json(job)
    data["events"] = [
        {"from": e["from_status"], "to": e["to_status"], "at": iso(e["at"]), "detail": e["detail"]}
        for e in job.events
    ]
    return JSONResponse(data)


async def cancel_queue_message(request: Request) -> Response:
    instance = await authenticated(request)
    zaap_id = request.path_params["zaap_id"]
    job = await call(reads.message, core(request), zaap_id)
    if job.instance_id != instance.id:
        raise ValidationError("zaapId", "message not found", status=404)
    previous = await cancel_counted(request, zaap_id)
    return JSONResponse({"zaapId": zaap_id, "status": "cancelled", "previousStatus": previous})


async def cancel_queue(request: Request) -> Response:
    instance = await authenticated(request)
    return JSONResponse({"cancelled": await cancel_all_counted(request, instance.id)})


async def cancel_counted(request: Request, zaap_id: str) -> str:
    """Cancel one message (the routes' and the dashboard's way), counted in /metrics; the status
    it had."""
    previous = await call(control.cancel, core(request), zaap_id)
    metrics.CANCELLED.inc()
    return previous


async def cancel_all_counted(request: Request, instance_id: UUID) -> int:
    """Cancel every pending message of an instance, counted in /metrics; how many."""
    count = await call(control.cancel_all, core(request), instance_id)
    metrics.CANCELLED.inc(count)
    return count


async def pause_instance(request: Request) -> Response:
    instance = await authenticated(request)
    await call(control.set_paused, core(request), instance.id, True)
    return JSONResponse({"paused": True})


async def resume_instance(request: Request) -> Response:
    instance = await authenticated(request)
    await call(control.set_paused, core(request), instance.id, False)
    return JSONResponse({"paused": False})


# -- simulator control (mounted when the simulator is the default transport) -----------------


def transport_control(request: Request, transport: str) -> Any | None:
    """The API-side control of a transport that has no WhatsApp session to ask (the simulator:
    workers/transports/simulator.py `SimulatorControl`), given to create_app; None for a
    session transport, whose holder is asked through the core (`sessions.ask`)."""
    return request.app.state.controls.get(transport)


def simulator(request: Request) -> Any:
    return request.app.state.controls["simulator"]


async def switch(request: Request, control_: Any, instance_id: UUID, **knobs: Any) -> dict[str, Any]:
    """Set a controlled instance's knobs; flipping `connected` is a connection event."""
    await call(instances.get, core(request), instance_id)
    state = await call(control_.configure, instance_id, **knobs)
    if knobs.get("connected") is not None:
        await call(control.set_connection, core(request), instance_id,
                   "connected" if knobs["connected"] else "disconnected", "simulator switch")
        request.app.state.instances.forget(instance_id)  # the send answer's whatsAppStatus
    return state  # type: ignore[no-any-return]


async def simulator_configure(request: Request) -> Response:
    require_admin(request)
    instance_id = instance_id_from(request)
    data = await json_object(request)
    knobs: dict[str, Any] = {}
    if "connected" in data:
        if not isinstance(data["connected"], bool):
            raise ValidationError("connected", "connected must be true or false")
        knobs["connected"] = data["connected"]
    if "failMode" in data:
        if data["failMode"] not in ("retryable", "permanent"):
            raise ValidationError("failMode", "failMode must be 'retryable' or 'permanent'")
        knobs["fail_mode"] = data["failMode"]
    for field, name, maximum in (("failNext", "fail_next", 1_000_000), ("latencyMs", "latency_ms", 600_000)):
        if field in data:
            value = data[field]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
                raise ValidationError(field, f"{field} must be an integer from 0 to {maximum}")
            knobs[name] = value
    state = await switch(request, simulator(request), instance_id, **knobs)
    return JSONResponse({"connected": state["connected"], "failNext": state["fail_next"],
                         "failMode": state["fail_mode"], "latencyMs": state["latency_ms"]})


async def simulator_events(request: Request) -> Response:
    require_admin(request)
    instance_id = instance_id_from(request)
    events = await call(simulator(request).events, instance_id)
    return JSONResponse([
        {
            "kind": e["kind"], "phone": e["phone"], "presence": e["presence"],
            "zaapId": e["zaap_id"], "payload": e["payload"],
            "whatsappMessageId": e["whatsapp_message_id"],
            "startedAt": iso(e["started_at"]), "endedAt": iso(e["ended_at"]),
        }
        for e in events
    ])


# -- the WhatsApp connection --------------------------------------------------------------------


async def instance_status(request: Request) -> Response:
    """Z-API's status: is the instance connected, and if not, why."""
    instance = await authenticated(request)
    controlled = transport_control(request, instance.transport)
    if controlled is not None:
        connected = bool((await call(controlled.state, instance.id))["connected"])
        state, detail = ("connected", None) if connected else ("disconnected", "simulator switched off")
    else:
        status = await call(reads.connection, core(request), instance.id)
        state = status["connection_state"] if status["owner_alive"] else "disconnected"
        detail = status["connection_detail"] if status["owner_alive"] else "no worker holds the session"
        connected = state == "connected"
    return JSONResponse({
        "connected": connected, "smartphoneConnected": connected, "state": state,
        "error": None if connected else detail, "session": instance.whatsapp_jid,
        "transport": instance.transport, "paused": instance.paused,
        "queueDepth": await call(reads.queue_depth, core(request), instance.id),
    })


async def _pairing_instance(request: Request) -> tuple[Instance, dict[str, Any]]:
    instance = await authenticated(request)
    if transport_control(request, instance.transport) is not None:
        raise ValidationError("instance", f"{instance.transport} instances need no pairing", status=409)
    return instance, await call(reads.connection, core(request), instance.id)


async def _current_qr(request: Request) -> dict[str, Any]:
    """The pairing QR code, starting a pairing attempt if none is under way (409 saying why not)."""
    instance, status = await _pairing_instance(request)
    if status["connection_state"] == "connected":
        raise ValidationError("instance", "the instance is already connected", status=409)
    return await call(sessions.request_qr, core(request), instance.id)


async def qr_code(request: Request) -> Response:
    """The current pairing QR code as text and as a PNG data URI (it changes every ~20 s)."""
    status = await _current_qr(request)
    png = qr_png(status["qr_code"])
    return JSONResponse({"value": status["qr_code"], "updatedAt": iso(status["qr_updated_at"]),
                         "image": "data:image/png;base64," + base64.b64encode(png).decode()})


async def qr_code_image(request: Request) -> Response:
    status = await _current_qr(request)
    return Response(qr_png(status["qr_code"]), media_type="image/png")


def qr_png(text: str) -> bytes:
    import segno

    buffer = io.BytesIO()
    segno.make_qr(text, error="L").save(buffer, kind="png", scale=6, border=2)
    return buffer.getvalue()


async def phone_code(request: Request) -> Response:
    """An 8-character code to link the instance from the phone, instead of the QR code."""
    instance, _ = await _pairing_instance(request)
    phone = schemas.phone({"phone": request.path_params["phone"]})
    if not phone.isdigit():
        raise ValidationError("phone", "phone must be the instance's own number, digits with country code")
    result = await call(sessions.ask, core(request), instance.id, "pair_phone", {"phone": phone})
    return JSONResponse({"code": result["code"]})


async def session_action(request: Request, instance: Instance, command: str, connected: bool) -> None:
    """A session transport's holder runs `command`; a controlled one (the simulator) is switched."""
    controlled = transport_control(request, instance.transport)
    if controlled is not None:
        await switch(request, controlled, instance.id, connected=connected)
    else:
        await call(sessions.ask, core(request), instance.id, command)


async def _session_action(request: Request, command: str, connected: bool) -> Response:
    await session_action(request, await authenticated(request), command, connected)
    return JSONResponse({"value": True})


async def disconnect_instance(request: Request) -> Response:
    """Log the instance out of WhatsApp (it must be paired again); the simulator just goes offline."""
    return await _session_action(request, "logout", connected=False)


async def restart_instance(request: Request) -> Response:
    """Reconnect the instance's WhatsApp session; the simulator comes back online."""
    return await _session_action(request, "restart", connected=True)


# -- webhooks ------------------------------------------------------------------------------------


def update_webhook(events: tuple[str, ...]) -> Callable[[Request], Any]:
    """Z-API's `PUT …/update-webhook-<event>` (`update-every-webhooks`: all four): `{"value": url}`;
    an empty value or null removes it."""

    async def endpoint(request: Request) -> Response:
        instance = await authenticated(request)
        value = (await json_object(request)).get("value")
        url = None if value in (None, "") else schemas.url({"value": value}, "value")
        await call(webhooks.configure, core(request), instance.id, dict.fromkeys(events, url))
        return JSONResponse({"value": True})

    endpoint.__name__ = "update_webhooks_" + "_".join(e.replace("-", "_") for e in events)
    return endpoint


async def webhook_settings(request: Request) -> Response:
    """The instance's webhook URLs and the secret deliveries are signed with."""
    instance = await authenticated(request)
    row = await call(webhooks.settings, core(request), instance.id) or {}
    urls = row.get("urls") or {}
    return JSONResponse({**{key: urls.get(event) for event, key in webhooks.EVENTS.items()},
                         "secret": row.get("secret"),
                         "previousSecretValidUntil": iso(row.get("previous_secret_until"))})


async def rotate_webhook_secret(request: Request) -> Response:
    """A new signing secret; the previous one keeps signing beside it (a second `v2`) for
    `WEBHOOK_SECRET_GRACE`, so the receiver can switch without losing a delivery."""
    instance = await authenticated(request)
    row = await call(webhooks.rotate_secret, core(request), instance.id, core(request).settings.webhook_secret_grace)
    return JSONResponse({"secret": row["secret"], "previousSecretValidUntil": iso(row["previous_secret_until"])})


async def webhook_deliveries(request: Request) -> Response:
    """The instance's latest deliveries, newest first: attempts, last answer, outcome."""
    instance = await authenticated(request)
    limit, _ = schemas.page(request.query_params)
    rows = await call(webhooks.deliveries, core(request), instance.id, limit)
    return JSONResponse([{
        "id": r["id"], "event": r["event"], "url": r["url"], "body": r["body"], "createdAt": iso(r["created_at"]),
        "attempts": r["attempts"], "nextAttemptAt": iso(r["next_attempt_at"]),
        "lastAttemptAt": iso(r["last_attempt_at"]), "lastStatus": r["last_status"], "lastError": r["last_error"],
        "deliveredAt": iso(r["delivered_at"]), "givenUpAt": iso(r["given_up_at"]),
        "status": "delivered" if r["delivered_at"] else "given up" if r["given_up_at"]
        else "posting" if r["posting_since"] else "pending",
    } for r in rows])


async def simulator_receipt(request: Request) -> Response:
    """What a phone's receipt does, for a simulated instance: `{messageId, status}` with status
    RECEIVED, READ or PLAYED (the message's WhatsApp id, as its send returned it)."""
    require_admin(request)
    instance_id = instance_id_from(request)
    data = await json_object(request)
    kinds = {"RECEIVED": "delivered", "READ": "read", "PLAYED": "played"}
    if data.get("status") not in kinds:
        raise ValidationError("status", "status must be RECEIVED, READ or PLAYED")
    message_id = schemas.non_empty_text(data, "messageId", max_length=200)
    await call(instances.get, core(request), instance_id)
    moved = await call(sessions.record_receipt, core(request), instance_id, [message_id], kinds[data["status"]])
    return JSONResponse({"value": True, "moved": moved})


async def openapi_document(request: Request) -> Response:
    """The OpenAPI 3.1 document of this API (service/api/openapi.py)."""
    from service.api.openapi import document

    return JSONResponse(document())


async def metrics_exposition(request: Request) -> Response:
    """Prometheus' scrape (no instance data: counts by status, type and outcome)."""
    body = await call(metrics.exposition, request.app.state.snapshot)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
