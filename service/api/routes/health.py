"""Liveness, readiness, the OpenAPI document and the Prometheus scrape: what anyone may ask."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import metrics
from service.api.calls import call, core
from service.db.migrations import pending_migrations

logger = logging.getLogger("wmq.api")


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


async def openapi_document(request: Request) -> Response:
    """The OpenAPI 3.1 document of this API (service/api/openapi.py)."""
    from service.api.openapi import document

    return JSONResponse(document())


async def metrics_exposition(request: Request) -> Response:
    """Prometheus' scrape (no instance data: counts by status, type and outcome)."""
    body = await call(metrics.exposition, request.app.state.snapshot)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
