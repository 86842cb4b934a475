"""Instances, for the admin: create, list, rotate a token, remove."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import schemas
from service.api.auth import instance_id_from, require_admin
from service.api.calls import call, core, json_object
from service.api.schemas import ValidationError
from service.api.shapes import instance_json
from service.core import instances


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
