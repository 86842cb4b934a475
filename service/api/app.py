"""The Starlette application: every route in one list, read top to bottom."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.api import endpoints as e
from service.api.schemas import ValidationError
from service.core import Coordinator
from service.core.models import (
    CancelRefused,
    CoreError,
    DueTimeTooFar,
    InstanceNotFound,
    JobNotFound,
    SessionCommandFailed,
)
from service.db import make_async_pool, make_pool
from service.settings import Settings

logger = logging.getLogger("wmq.api")

INSTANCE = "/instances/{instance}/token/{token}"


def routes(settings: Settings) -> list[Route]:
    table = [
        Route("/healthz", e.healthz),
        Route("/readyz", e.readyz),
        Route("/instances", e.create_instance, methods=["POST"]),
        Route("/instances", e.list_instances, methods=["GET"]),
        Route("/instances/{instance}", e.delete_instance, methods=["DELETE"]),
        Route(f"{INSTANCE}/send-text", e.send_text, methods=["POST"]),
        Route(f"{INSTANCE}/queue", e.list_queue, methods=["GET"]),
        Route(f"{INSTANCE}/queue", e.cancel_queue, methods=["DELETE"]),
        Route(f"{INSTANCE}/queue/stats", e.queue_stats, methods=["GET"]),
        Route(f"{INSTANCE}/queue/{{zaap_id}}", e.get_queue_message, methods=["GET"]),
        Route(f"{INSTANCE}/queue/{{zaap_id}}", e.cancel_queue_message, methods=["DELETE"]),
        Route(f"{INSTANCE}/pause", e.pause_instance, methods=["POST"]),
        Route(f"{INSTANCE}/resume", e.resume_instance, methods=["POST"]),
        Route(f"{INSTANCE}/status", e.instance_status, methods=["GET"]),
        Route(f"{INSTANCE}/qr-code", e.qr_code, methods=["GET"]),
        Route(f"{INSTANCE}/qr-code/image", e.qr_code_image, methods=["GET"]),
        Route(f"{INSTANCE}/phone-code/{{phone}}", e.phone_code, methods=["GET"]),
        Route(f"{INSTANCE}/disconnect", e.disconnect_instance, methods=["POST"]),
        Route(f"{INSTANCE}/restart", e.restart_instance, methods=["POST"]),
    ]
    if settings.whatsapp_transport == "simulator":
        table += [
            Route("/simulator/instances/{instance}", e.simulator_configure, methods=["POST"]),
            Route("/simulator/instances/{instance}/events", e.simulator_events, methods=["GET"]),
        ]
    return table


def error(status: int, message: str, field: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return error(exc.status, str(exc), exc.field)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Unknown route or method: JSON like every other error."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), "path" if exc.status_code == 404 else "method")


async def on_core_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoreError)
    if isinstance(exc, (InstanceNotFound, JobNotFound)):
        status = 404
    elif isinstance(exc, (CancelRefused, SessionCommandFailed)):
        status = 409
    elif isinstance(exc, DueTimeTooFar):
        status = 400
    else:
        status = 401
    return error(status, str(exc), exc.field)


def create_app(settings: Settings, database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = make_pool(database_url, max_size=20, name="wmq-api")
        async_pool = await make_async_pool(database_url, max_size=20, name="wmq-api")
        app.state.coordinator = Coordinator(pool, settings, async_pool)
        app.state.settings = settings
        app.state.instances = e.InstanceCache()
        try:
            yield
        finally:
            app.state.coordinator.stop()
            await async_pool.close()
            pool.close()

    return Starlette(
        routes=routes(settings),
        lifespan=lifespan,
        exception_handlers={
            ValidationError: on_validation_error,
            CoreError: on_core_error,
            HTTPException: on_http_error,
        },
    )
