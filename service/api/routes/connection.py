"""The WhatsApp connection of an instance: its status, pairing (QR code, phone code), log out
and reconnect."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import schemas
from service.api.actions import (
    qr_png,
    session_action,
    transport_control,
)
from service.api.auth import authenticated
from service.api.calls import call, core
from service.api.schemas import ValidationError
from service.api.shapes import iso
from service.core import reads, session_commands
from service.core.models import Instance


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
    return await call(session_commands.request_qr, core(request), instance.id)


async def qr_code(request: Request) -> Response:
    """The current pairing QR code as text and as a PNG data URI (it changes every ~20 s)."""
    status = await _current_qr(request)
    png = qr_png(status["qr_code"])
    return JSONResponse({"value": status["qr_code"], "updatedAt": iso(status["qr_updated_at"]),
                         "image": "data:image/png;base64," + base64.b64encode(png).decode()})


async def qr_code_image(request: Request) -> Response:
    status = await _current_qr(request)
    return Response(qr_png(status["qr_code"]), media_type="image/png")


async def phone_code(request: Request) -> Response:
    """An 8-character code to link the instance from the phone, instead of the QR code."""
    instance, _ = await _pairing_instance(request)
    phone = schemas.phone({"phone": request.path_params["phone"]})
    if not phone.isdigit():
        raise ValidationError("phone", "phone must be the instance's own number, digits with country code")
    result = await call(session_commands.ask, core(request), instance.id, "pair_phone", {"phone": phone})
    return JSONResponse({"code": result["code"]})


async def _session_action(request: Request, command: str, connected: bool) -> Response:
    await session_action(request, await authenticated(request), command, connected)
    return JSONResponse({"value": True})


async def disconnect_instance(request: Request) -> Response:
    """Log the instance out of WhatsApp (it must be paired again); the simulator just goes offline."""
    return await _session_action(request, "logout", connected=False)


async def restart_instance(request: Request) -> Response:
    """Reconnect the instance's WhatsApp session; the simulator comes back online."""
    return await _session_action(request, "restart", connected=True)
