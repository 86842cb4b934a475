"""An instance's queue: list it (Z-API's pages and cursor), count it, read or cancel a message,
pause and resume."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import schemas
from service.api.actions import (
    cancel_all_counted,
    cancel_counted,
)
from service.api.auth import authenticated
from service.api.calls import call, core, json_object
from service.api.schemas import ValidationError
from service.api.shapes import iso, message_json, queue_entry
from service.core import control, reads, session_commands
from service.core.errors import SessionCommandFailed


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


async def pause_instance(request: Request) -> Response:
    instance = await authenticated(request)
    await call(control.set_paused, core(request), instance.id, True)
    return JSONResponse({"paused": True})


async def resume_instance(request: Request) -> Response:
    """Resume the queue; an instance `restricted` by WhatsApp's reach-out time-lock (463) is also
    asked to try its head now rather than at the restriction's next try."""
    instance = await authenticated(request)
    await call(control.set_paused, core(request), instance.id, False)
    answer: dict[str, object] = {"paused": False}
    status = await call(reads.connection, core(request), instance.id)
    if status["connection_state"] == "restricted":
        try:
            await call(session_commands.ask, core(request), instance.id, "unrestrict")
            answer["restricted"] = False
        except SessionCommandFailed as error:  # it lifts by itself at its next try
            answer.update(restricted=True, error=str(error))
    return JSONResponse(answer)
