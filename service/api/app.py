"""The Starlette application: every route in one list, read top to bottom."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api import dashboard, docs
from service.api.auth import InstanceCache
from service.api.errors import HANDLERS
from service.api.routes import connection, health, instances, queue, sending
from service.api.routes import simulator_control as simulated
from service.api.routes import webhook_settings as hooks
from service.api.schemas import ValidationError
from service.core.context import Core
from service.core.gauges import Snapshot
from service.core.message_types import TYPES
from service.core.webhooks import EVENTS as WEBHOOK_EVENTS
from service.db.pools import make_async_pool, make_pool
from service.settings import Settings

logger = logging.getLogger("wmq.api")

INSTANCE = "/instances/{instance}/token/{token}"

#: How long a request waits for a database connection before it is answered 503 (Retry-After),
#: having stored nothing.
DATABASE_WAIT = 5.0


def routes(settings: Settings) -> list[BaseRoute]:
    table: list[BaseRoute] = [
        Route("/healthz", health.healthz),
        Route("/readyz", health.readyz),
        Route("/openapi.json", health.openapi_document),
        Route("/metrics", health.metrics_exposition),
        Route("/docs", docs.page),
        *dashboard.routes(),
        Route("/instances", instances.create_instance, methods=["POST"]),
        Route("/instances", instances.list_instances, methods=["GET"]),
        Route("/instances/{instance}", instances.delete_instance, methods=["DELETE"]),
        Route("/instances/{instance}/rotate-token", instances.rotate_token, methods=["POST"]),
        # One send route per message type that has one (service/core/message_types.py).
        *(Route(f"{INSTANCE}/{route}", sending.send_route(t), methods=["POST"])
          for t in TYPES.values() for route in (t.route, *t.aliases)),
        Route(f"{INSTANCE}/queue", queue.list_queue, methods=["GET"]),
        Route(f"{INSTANCE}/queue", queue.queue_cursor, methods=["POST"]),
        Route(f"{INSTANCE}/queue", queue.cancel_queue, methods=["DELETE"]),
        Route(f"{INSTANCE}/queue/stats", queue.queue_stats, methods=["GET"]),
        Route(f"{INSTANCE}/queue/count", queue.queue_count, methods=["GET"]),
        Route(f"{INSTANCE}/queue/{{zaap_id}}", queue.get_queue_message, methods=["GET"]),
        Route(f"{INSTANCE}/queue/{{zaap_id}}", queue.cancel_queue_message, methods=["DELETE"]),
        Route(f"{INSTANCE}/pause", queue.pause_instance, methods=["POST"]),
        Route(f"{INSTANCE}/resume", queue.resume_instance, methods=["POST"]),
        Route(f"{INSTANCE}/status", connection.instance_status, methods=["GET"]),
        Route(f"{INSTANCE}/qr-code", connection.qr_code, methods=["GET"]),
        Route(f"{INSTANCE}/qr-code/image", connection.qr_code_image, methods=["GET"]),
        Route(f"{INSTANCE}/phone-code/{{phone}}", connection.phone_code, methods=["GET"]),
        Route(f"{INSTANCE}/disconnect", connection.disconnect_instance, methods=["POST"]),
        Route(f"{INSTANCE}/restart", connection.restart_instance, methods=["POST"]),
        # Webhooks, Z-API's routes: one per event, and all four at once.
        *(Route(f"{INSTANCE}/update-webhook-{event}", hooks.update_webhook((event,)), methods=["PUT"])
          for event in WEBHOOK_EVENTS),
        Route(f"{INSTANCE}/update-every-webhooks", hooks.update_webhook(tuple(WEBHOOK_EVENTS)), methods=["PUT"]),
        Route(f"{INSTANCE}/webhooks", hooks.webhook_settings, methods=["GET"]),
        Route(f"{INSTANCE}/rotate-webhook-secret", hooks.rotate_webhook_secret, methods=["POST"]),
        Route(f"{INSTANCE}/webhook-deliveries", hooks.webhook_deliveries, methods=["GET"]),
    ]
    if settings.whatsapp_transport == "simulator":  # the simulator's own knobs, for tests and demos
        table += [
            Route("/simulator/instances/{instance}", simulated.simulator_configure, methods=["POST"]),
            Route("/simulator/instances/{instance}/events", simulated.simulator_events, methods=["GET"]),
            Route("/simulator/instances/{instance}/receipts", simulated.simulator_receipt, methods=["POST"]),
        ]
    return table


def create_app(settings: Settings, database_url: str, *, controls: dict[str, Any]) -> Starlette:
    """The API. `controls`: by transport name, the API-side control of each transport that has no
    WhatsApp session to ask (`configure`, `state`, `events`: workers/transports/simulator.py
    `SimulatorControl`), each built on the API's pool; wired by the caller (service/cli.py) so the
    API imports no transport. Instances of the other transports are steered through their
    session holder (service/core/session_commands.py)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = make_pool(database_url, max_size=20, name="wmq-api", timeout=DATABASE_WAIT)
        async_pool = await make_async_pool(database_url, max_size=20, name="wmq-api", timeout=DATABASE_WAIT)
        app.state.core = Core(pool, settings, async_pool)
        app.state.settings = settings
        app.state.instances = InstanceCache()
        app.state.controls = {name: build(pool) for name, build in controls.items()}
        app.state.snapshot = Snapshot(app.state.core)
        try:
            yield
        finally:
            await async_pool.close()
            pool.close()

    return Starlette(routes=routes(settings), lifespan=lifespan, exception_handlers=HANDLERS,
                     middleware=[Middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)])


class BodyLimit:
    """Refuse request bodies over `max_bytes` with a 413 naming `body`, by their Content-Length
    or, without one, as they arrive: a hostile client cannot make the API hold more."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) <= self.max_bytes:
            # The server holds a body to its declared length: nothing to count (the common case).
            await self.app(scope, receive, send)
            return
        received = 0
        too_large = f"request body is larger than {self.max_bytes} bytes"

        async def limited() -> Message:
            nonlocal received
            if declared is not None:  # declared too large, or not a number
                raise ValidationError("body", too_large, status=413)
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ValidationError("body", too_large, status=413)
            return message

        await self.app(scope, limited, send)
