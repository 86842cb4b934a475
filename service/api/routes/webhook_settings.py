"""Webhooks, Z-API's routes: set an event's URL, read the settings, rotate the signing secret,
list the deliveries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.api import schemas
from service.api.auth import authenticated
from service.api.calls import call, core, json_object
from service.api.shapes import iso
from service.core import webhooks


def update_webhook(events: tuple[str, ...]) -> Callable[[Request], Any]:
    """Z-API's `PUT …/update-webhook-<event>` (`update-every-webhooks`: all four): `{"value": url}`;
    an empty value or null removes it."""

    async def endpoint(request: Request) -> Response:
        instance = await authenticated(request)
        value = (await json_object(request)).get("value")
        url = None if value in (None, "") else schemas.url({"value": value}, "value")
        await call(webhooks.configure, core(request), instance.id, dict.fromkeys(events, url))
        return JSONResponse({"value": True})

    endpoint.__name__ = "update_webhooks_" + "_".join(e.replace("-", "_") for e in events)
    return endpoint


async def webhook_settings(request: Request) -> Response:
    """The instance's webhook URLs and the secret deliveries are signed with."""
    instance = await authenticated(request)
    row = await call(webhooks.settings, core(request), instance.id) or {}
    urls = row.get("urls") or {}
    return JSONResponse({**{key: urls.get(event) for event, key in webhooks.EVENTS.items()},
                         "secret": row.get("secret"),
                         "previousSecretValidUntil": iso(row.get("previous_secret_until"))})


async def rotate_webhook_secret(request: Request) -> Response:
    """A new signing secret; the previous one keeps signing beside it (a second `v2`) for
    `WEBHOOK_SECRET_GRACE`, so the receiver can switch without losing a delivery."""
    instance = await authenticated(request)
    row = await call(webhooks.rotate_secret, core(request), instance.id, core(request).settings.webhook_secret_grace)
    return JSONResponse({"secret": row["secret"], "previousSecretValidUntil": iso(row["previous_secret_until"])})


async def webhook_deliveries(request: Request) -> Response:
    """The instance's latest deliveries, newest first: attempts, last answer, outcome."""
    instance = await authenticated(request)
    limit, _ = schemas.page(request.query_params)
    rows = await call(webhooks.deliveries, core(request), instance.id, limit)
    return JSONResponse([{
        "id": r["id"], "event": r["event"], "url": r["url"], "body": r["body"], "createdAt": iso(r["created_at"]),
        "attempts": r["attempts"], "nextAttemptAt": iso(r["next_attempt_at"]),
        "lastAttemptAt": iso(r["last_attempt_at"]), "lastStatus": r["last_status"], "lastError": r["last_error"],
        "deliveredAt": iso(r["delivered_at"]), "givenUpAt": iso(r["given_up_at"]),
        "status": "delivered" if r["delivered_at"] else "given up" if r["given_up_at"]
        else "posting" if r["posting_since"] else "pending",
    } for r in rows])
