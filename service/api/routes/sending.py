"""The send routes, one per message type (service/core/message_types.py): validate, enqueue in
one commit, answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import metrics, schemas
from service.api.auth import UNAUTHORIZED, authenticated
from service.api.calls import core, parsed
from service.api.schemas import ValidationError
from service.api.shapes import iso
from service.core import enqueue
from service.core.errors import InstanceNotFound
from service.core.message_types import MessageType
from service.core.models import MessageRequest


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
