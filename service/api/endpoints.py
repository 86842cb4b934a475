"""The HTTP endpoints: plain async functions that validate, call the core, and shape JSON.

The core is synchronous (it is shared with the worker threads); calls to it run in Starlette's
thread pool.
"""

from __future__ import annotations

import base64
import io
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import schemas
from service.api.schemas import ValidationError
from service.core import Coordinator
from service.core.coordinator import check_credentials
from service.core.models import Instance, Job, MessageRequest
from service.db import pending_migrations

T = TypeVar("T")


def core(request: Request) -> Coordinator:
    return request.app.state.coordinator  # type: ignore[no-any-return]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def instance_id_from(request: Request) -> UUID:
    try:
        return UUID(request.path_params["instance"])
    except ValueError:
        raise ValidationError("instance", "instance id must be a UUID", status=404) from None


class InstanceCache:
    """Instances by id for a few seconds, so the hot send path authenticates without a query.

    Only the credentials are trusted from it: a removed instance is still refused (its enqueue
    finds no queue: 404), and every other route reads the instance afresh."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self.entries: dict[UUID, tuple[float, Instance]] = {}

    def get(self, instance_id: UUID) -> Instance | None:
        entry = self.entries.get(instance_id)
        if entry is None or entry[0] < time.monotonic():
            self.entries.pop(instance_id, None)
            return None
        return entry[1]

    def put(self, instance: Instance) -> None:
        if len(self.entries) > 100_000:
            self.entries.clear()
        self.entries[instance.id] = (time.monotonic() + self.ttl, instance)


async def authenticated(request: Request, *, cached: bool = False) -> Instance:
    """The instance named in the path, if its token (and Client-Token header) match."""
    instance_id = instance_id_from(request)
    cache: InstanceCache = request.app.state.instances
    instance = cache.get(instance_id) if cached else None
    if instance is None:
        instance = await core(request).get_instance_async(instance_id)
        cache.put(instance)
    return check_credentials(instance, request.path_params["token"], request.headers.get("client-token"))


def require_admin(request: Request) -> None:
    expected = request.app.state.settings.admin_token
    given = request.headers.get("authorization", "")
    if not expected or not secrets.compare_digest(given, f"Bearer {expected}"):
        raise ValidationError("Authorization", "admin routes need 'Authorization: Bearer <ADMIN_TOKEN>'", status=401)


def job_json(job: Job) -> dict[str, Any]:
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
    def check() -> list[str]:
        with core(request).pool.connection(timeout=5) as conn:
            return pending_migrations(conn)

    try:
        pending = await call(check)
    except Exception as error:
        return JSONResponse({"status": "unavailable", "error": f"database: {error}"}, 503)
    if pending:
        return JSONResponse({"status": "unavailable", "error": "migrations pending", "pending": pending}, 503)
    return JSONResponse({"status": "ready"})


# -- instances (admin) ------------------------------------------------------------------------


async def create_instance(request: Request) -> Response:
    require_admin(request)
    raw = await request.body()
    data = schemas.parse_json_object(raw) if raw.strip() else {}
    name = schemas.optional_text(data, "name") or ""
    client_token = schemas.optional_text(data, "clientToken")
    transport = schemas.optional_text(data, "transport")
    if transport not in (None, "simulator", "neonize"):
        raise ValidationError("transport", "transport must be 'simulator' or 'neonize'")
    instance = await call(core(request).add_instance_queue, name=name, client_token=client_token,
                          transport=transport)
    return JSONResponse(instance_json(instance, with_token=True), status_code=201)


async def list_instances(request: Request) -> Response:
    require_admin(request)
    instances = await call(core(request).list_instances)
    return JSONResponse([instance_json(i) for i in instances])


async def delete_instance(request: Request) -> Response:
    require_admin(request)
    await call(core(request).remove_instance_queue, instance_id_from(request))
    return Response(status_code=204)


# -- sending ----------------------------------------------------------------------------------


def send_route(parse: Callable[[dict[str, Any]], MessageRequest]) -> Callable[[Request], Any]:
    """An endpoint that validates with `parse` and enqueues (one commit, then the answer)."""

    async def endpoint(request: Request) -> Response:
        instance = await authenticated(request, cached=True)
        message = parse(schemas.parse_json_object(await request.body()))
        enqueued = await core(request).enqueue_message_async(instance.id, message)
        return JSONResponse({
            "zaapId": enqueued.zaap_id,
            "messageId": enqueued.zaap_id,
            "id": enqueued.zaap_id,
            "status": enqueued.status,
            "sequence": enqueued.sequence,
            "scheduledFor": iso(enqueued.scheduled_at),
        })

    return endpoint


send_text = send_route(schemas.send_text)


# -- the queue --------------------------------------------------------------------------------


async def list_queue(request: Request) -> Response:
    instance = await authenticated(request)
    limit, offset = schemas.page(request.query_params)
    status = request.query_params.get("status")
    jobs, total = await call(core(request).list_queue_jobs, instance.id, limit, offset, status)
    return JSONResponse({
        "total": total, "limit": limit, "offset": offset,
        "messages": [job_json(j) for j in jobs],
    })


async def queue_stats(request: Request) -> Response:
    instance = await authenticated(request)
    stats = await call(core(request).get_queue_stats, instance.id)
    return JSONResponse({k: (iso(v) if isinstance(v, datetime) else str(v) if isinstance(v, UUID) else v)
                         for k, v in stats.items()})


async def get_queue_message(request: Request) -> Response:
    instance = await authenticated(request)
    job = await call(core(request).get_job_by_zaap_id, request.path_params["zaap_id"], with_events=True)
    if job.instance_id != instance.id:
        raise ValidationError("zaapId", "message not found", status=404)
    data = job_json(job)
    data["events"] = [
        {"from": e["from_status"], "to": e["to_status"], "at": iso(e["at"]), "detail": e["detail"]}
        for e in job.events
    ]
    return JSONResponse(data)


async def cancel_queue_message(request: Request) -> Response:
    instance = await authenticated(request)
    zaap_id = request.path_params["zaap_id"]
    job = await call(core(request).get_job_by_zaap_id, zaap_id)
    if job.instance_id != instance.id:
        raise ValidationError("zaapId", "message not found", status=404)
    previous = await call(core(request).cancel_job, zaap_id)
    return JSONResponse({"zaapId": zaap_id, "status": "cancelled", "previousStatus": previous})


async def cancel_queue(request: Request) -> Response:
    instance = await authenticated(request)
    count = await call(core(request).cancel_all, instance.id)
    return JSONResponse({"cancelled": count})


async def pause_instance(request: Request) -> Response:
    instance = await authenticated(request)
    await call(core(request).pause, instance.id)
    return JSONResponse({"paused": True})


async def resume_instance(request: Request) -> Response:
    instance = await authenticated(request)
    await call(core(request).resume, instance.id)
    return JSONResponse({"paused": False})


# -- simulator control ------------------------------------------------------------------------


async def simulator_configure(request: Request) -> Response:
    require_admin(request)
    instance_id = instance_id_from(request)
    data = schemas.parse_json_object(await request.body())
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
    state = await call(core(request).simulator_configure, instance_id, **knobs)
    return JSONResponse({"connected": state["connected"], "failNext": state["fail_next"],
                         "failMode": state["fail_mode"], "latencyMs": state["latency_ms"]})


async def simulator_events(request: Request) -> Response:
    require_admin(request)
    instance_id = instance_id_from(request)
    events = await call(core(request).simulator_events, instance_id)
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
    if instance.transport == "simulator":
        connected = await call(core(request).simulator_connected, instance.id)
        state, detail = ("connected", None) if connected else ("disconnected", "simulator switched off")
    else:
        status = await call(core(request).instance_status, instance.id)
        state = status["connection_state"] if status["owner_alive"] else "disconnected"
        detail = status["connection_detail"] if status["owner_alive"] else "no worker holds the session"
        connected = state == "connected"
    return JSONResponse({
        "connected": connected, "smartphoneConnected": connected, "state": state,
        "error": None if connected else detail, "session": instance.whatsapp_jid,
        "transport": instance.transport, "paused": instance.paused,
    })


async def _pairing_instance(request: Request) -> tuple[Instance, dict[str, Any]]:
    instance = await authenticated(request)
    if instance.transport != "neonize":
        raise ValidationError("instance", "simulator instances need no pairing", status=409)
    return instance, await call(core(request).instance_status, instance.id)


async def _current_qr(request: Request) -> dict[str, Any]:
    """The pairing instance's status, if it has a QR code to show (409 saying why not)."""
    _, status = await _pairing_instance(request)
    if status["connection_state"] == "connected":
        raise ValidationError("instance", "the instance is already connected", status=409)
    if not status["qr_code"]:
        raise ValidationError("instance", "no QR code yet: the worker is connecting, try again shortly", status=409)
    return status


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
    result = await call(core(request).run_session_command, instance.id, "pair_phone", {"phone": phone})
    return JSONResponse({"code": result["code"]})


async def _session_action(request: Request, command: str, simulator_connected: bool) -> Response:
    instance = await authenticated(request)
    if instance.transport == "simulator":
        await call(core(request).simulator_configure, instance.id, connected=simulator_connected)
    else:
        await call(core(request).run_session_command, instance.id, command)
    return JSONResponse({"value": True})


async def disconnect_instance(request: Request) -> Response:
    """Log the instance out of WhatsApp (it must be paired again); the simulator just goes offline."""
    return await _session_action(request, "logout", simulator_connected=False)


async def restart_instance(request: Request) -> Response:
    """Reconnect the instance's WhatsApp session; the simulator comes back online."""
    return await _session_action(request, "restart", simulator_connected=True)
