"""Every error the API answers with, as JSON `{"error", "field"}`, and the tables that map the
core's errors to HTTP: their kind to a status, their subject to the field a caller sent."""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api.metrics import REFUSED
from service.api.schemas import ValidationError
from service.core.errors import CoreError, Kind, Subject

STATUS_OF_KIND: dict[Kind, int] = {
    "not_found": 404,
    "conflict": 409,
    "unprocessable": 422,
    "rate_limited": 429,
    "invalid": 400,
    "too_large": 413,
}

FIELD_OF_SUBJECT: dict[Subject, str] = {
    "instance": "instance",
    "message": "zaapId",
    "transport": "transport",
    "delay": "delayMessage",
    "idempotency_key": "Idempotency-Key",
    "force": "force",
    "payload": "body",
}


def error(status: int, message: str, field: str) -> JSONResponse:
    REFUSED.labels(str(status)).inc()
    return JSONResponse({"error": message, "field": field}, status_code=status)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """Bad input, wrong credentials and refusals decided by the API itself (with `Retry-After`
    when the refusal says how long: service/api/auth.py `TooManyFailures`)."""
    assert isinstance(exc, ValidationError)
    response = error(exc.status, str(exc), exc.field)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def on_core_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoreError)
    response = error(STATUS_OF_KIND[exc.kind], str(exc), FIELD_OF_SUBJECT[exc.subject])
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Unknown route or method: JSON like every other error."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail), "path" if exc.status_code == 404 else "method")


async def on_database_unavailable(request: Request, exc: Exception) -> Response:
    """The database could not be reached within the API's wait (an outage, a failover): nothing
    was done; the caller may retry shortly."""
    response = error(503, "the database is unavailable; retry shortly", "database")
    response.headers["Retry-After"] = "1"
    return response


HANDLERS = {
    psycopg.OperationalError: on_database_unavailable,
    PoolTimeout: on_database_unavailable,
    ValidationError: on_validation_error,
    CoreError: on_core_error,
    HTTPException: on_http_error,
}
