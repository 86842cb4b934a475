"""The simulator's own knobs, mounted when the simulator is the default transport: switch an
instance, read what "WhatsApp" saw, play a phone's receipt."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import schemas
from service.api.actions import (
    simulator,
    switch,
)
from service.api.auth import instance_id_from, require_admin
from service.api.calls import call, core, json_object
from service.api.schemas import ValidationError
from service.api.shapes import iso
from service.core import instances, receipts


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
    for field, name, maximum in (("failNext", "fail_next", 1_000_000), ("latencyMs", "latency_ms", 600_000),
                                 ("prepareMs", "prepare_ms", 600_000)):
        if field in data:
            value = data[field]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
                raise ValidationError(field, f"{field} must be an integer from 0 to {maximum}")
            knobs[name] = value
    state = await switch(request, simulator(request), instance_id, **knobs)
    return JSONResponse({"connected": state["connected"], "failNext": state["fail_next"],
                         "failMode": state["fail_mode"], "latencyMs": state["latency_ms"],
                         "prepareMs": state["prepare_ms"]})


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
    moved = await call(receipts.record_receipt, core(request), instance_id, [message_id], kinds[data["status"]])
    return JSONResponse({"value": True, "moved": moved})
