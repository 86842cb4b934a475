"""The dashboard's pages and actions: server-rendered HTML (Jinja2), forms that POST and
redirect back, a little plain JavaScript for the chart and the refresh (static/), nothing from
a CDN. Every page needs a login (service/api/dashboard/cookies.py); every action a CSRF token."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from service.api.actions import cancel_all_counted, cancel_counted, qr_png, session_action, transport_control
from service.api.auth import TooManyFailures, record_failure, refuse_if_locked_out
from service.api.calls import call, core
from service.api.dashboard import cookies
from service.api.schemas import ValidationError
from service.api.shapes import iso
from service.api.templating import TEMPLATES
from service.core import control, enqueue, instances, overview, reads, session_commands, webhooks
from service.core.errors import CoreError, InstanceNotFound

FLASH = "wmq_flash"
#: Pages the browser may come back to after an action (never an address from outside).
PREFIX = "/dashboard"
#: Only this host's scripts, styles and images (and the QR code's data URI); no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def render(request: Request, template: str, csrf: str, status: int = 200, **context: Any) -> Response:
    flash = request.cookies.get(FLASH)
    response = TEMPLATES.TemplateResponse(request, template, {
        "csrf": csrf, "flash": flash, **context}, status_code=status)
    if flash:
        response.delete_cookie(FLASH, path=PREFIX)
    response.headers.update(SECURITY_HEADERS)
    return response


def back(request: Request, path: str, flash: str) -> Response:
    """Back to a dashboard page (303, so the browser GETs it), saying what happened."""
    response = RedirectResponse(path if path.startswith(PREFIX) else PREFIX, status_code=303)
    response.set_cookie(FLASH, quote(flash, safe=" ,.:;()'!?-_/"), max_age=60, path=PREFIX, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


#: The largest form a dashboard page posts (a token, a CSRF token, a `next` path are far less):
#: a larger body gets a 413 before it is read whole or parsed.
MAX_FORM_BYTES = 16 * 1024


async def form_of(request: Request) -> dict[str, str]:
    """A posted form's fields (URL-encoded: the dashboard's forms post nothing else); 413 for a
    body over MAX_FORM_BYTES, by its Content-Length or, without one, as soon as that much came."""
    too_large = ValidationError("body", f"a dashboard form is at most {MAX_FORM_BYTES} bytes", status=413)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise too_large
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def not_logged_in() -> Response:
    return JSONResponse({"error": "log in with the admin token", "field": "Authorization"}, 401)


def page(handler: Callable[[Request, str], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A page: the login page for a browser without a session (no data shown), 401 for a script
    (a wrong bearer token counted as a failed login: 429 once its address failed too often)."""

    async def endpoint(request: Request) -> Response:
        refuse_if_locked_out(request)
        try:
            csrf = cookies.require(request)
        except cookies.NotLoggedIn:
            if "authorization" in request.headers:
                record_failure(request)
            if "text/html" in request.headers.get("accept", ""):
                return RedirectResponse(f"{PREFIX}/login", status_code=303)
            return not_logged_in()
        return await handler(request, csrf)

    endpoint.__name__ = handler.__name__
    return endpoint


def action(handler: Callable[[Request], Awaitable[str]]) -> Callable[[Request], Awaitable[Response]]:
    """An action: a POST with the CSRF token; does one thing and goes back to where it came from
    (the form's `next`) saying what it did, or why not."""

    async def endpoint(request: Request) -> Response:
        refuse_if_locked_out(request)
        form = await form_of(request)
        try:
            cookies.check_action(request, form)
        except cookies.NotLoggedIn:
            if "authorization" in request.headers:
                record_failure(request)
            return not_logged_in()
        except cookies.CrossSite:
            return JSONResponse({"error": "missing or invalid CSRF token, or a request from another site",
                                 "field": "csrf"}, 403)
        try:
            done = await handler(request)
        except CoreError as error:
            done = f"Not done: {error}"
        return back(request, form.get("next", PREFIX), done)

    endpoint.__name__ = handler.__name__
    return endpoint


def instance_id(request: Request) -> UUID:
    try:
        return UUID(request.path_params["instance"])
    except ValueError:
        raise InstanceNotFound("instance not found") from None


# -- login ---------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    return TEMPLATES.TemplateResponse(request, "login.html", {"error": None, "csrf": ""}, headers=SECURITY_HEADERS)


async def login_submit(request: Request) -> Response:
    """The login form's post: a session cookie for the admin token; a wrong one is a failure
    counted against the client's address, which after too many gets 429 (even with the right
    token) until the window passes (service/api/auth.py `Failures`)."""
    try:
        refuse_if_locked_out(request)
    except TooManyFailures as refused:
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": f"Too many failed logins from your "
                                          f"address: try again in {refused.retry_after} s.", "csrf": ""},
                                          429, headers={**SECURITY_HEADERS, "Retry-After": str(refused.retry_after)})
    form = await form_of(request)
    if not request.app.state.settings.admin_token or not cookies.token_matches(request, form.get("token", "")):
        record_failure(request)
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": "That is not the admin token.", "csrf": ""},
                                          401, headers=SECURITY_HEADERS)
    response = RedirectResponse(PREFIX, status_code=303)
    response.set_cookie(cookies.COOKIE, cookies.new_session(request), max_age=cookies.LIFETIME, path=PREFIX,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    form = await form_of(request)
    try:
        cookies.check_action(request, form)
    except (cookies.NotLoggedIn, cookies.CrossSite):
        pass  # logging out is harmless either way
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(cookies.COOKIE, path=PREFIX)
    return response


# -- pages ---------------------------------------------------------------------------------------


#: Rows of the instances page: rendering is what an open tab costs (bench/observed.py: ~0.1 ms
#: of API CPU per row); the stuck ones come first, a filter finds any other.
INSTANCES_SHOWN = 500


@page
async def home(request: Request, csrf: str) -> Response:
    sort = request.query_params.get("sort", "overdue")
    search = request.query_params.get("q", "").strip()
    rows = await call(overview.instances, core(request), sort)
    stuck = sum(r["stuck"] for r in rows)
    if search:
        needle = search.lower()
        rows = [r for r in rows if needle in r["name"].lower() or needle in str(r["id"])]
    return render(request, "instances.html", csrf, instances=rows[:INSTANCES_SHOWN], total=len(rows), sort=sort,
                  search=search, stuck=stuck, stuck_after=request.app.state.settings.dashboard_stuck_after)


@page
async def instance_page(request: Request, csrf: str) -> Response:
    try:
        iid = instance_id(request)
        summary = await call(overview.instance, core(request), iid)
    except CoreError:
        return render(request, "missing.html", csrf, 404, what="instance")
    pending, total = await call(reads.queue_page, core(request), iid, 200, 0, "pending")
    finished = await call(overview.recent_finished, core(request), iid)
    session_bound = transport_control(request, summary["transport"]) is None
    return render(request, "instance.html", csrf, i=summary, pending=pending, pending_total=total,
                  finished=finished, session_bound=session_bound)


@page
async def qr_page(request: Request, csrf: str) -> Response:
    """The pairing QR code of a session instance (starting a pairing attempt if none runs); the
    page reloads itself as WhatsApp renews the code."""
    try:
        iid = instance_id(request)
        summary = await call(overview.instance, core(request), iid)
        if transport_control(request, summary["transport"]) is not None:
            return render(request, "missing.html", csrf, 409,
                          what=f"QR code ({summary['transport']} instances need no pairing)")
        if summary["connection_state"] == "connected":
            return render(request, "missing.html", csrf, 409, what="QR code (the instance is already connected)")
        status = await call(session_commands.request_qr, core(request), iid)
    except InstanceNotFound:
        return render(request, "missing.html", csrf, 404, what="instance")
    except CoreError as error:  # connected already, or no worker holds its session: say so
        return render(request, "missing.html", csrf, 409, what=f"QR code ({error})")
    image = "data:image/png;base64," + base64.b64encode(qr_png(status["qr_code"])).decode()
    return render(request, "qr.html", csrf, i=summary, image=image, updated=status["qr_updated_at"])


@page
async def message_page(request: Request, csrf: str) -> Response:
    try:
        job = await call(reads.message, core(request), request.path_params["zaap_id"], with_events=True)
    except CoreError:
        return render(request, "missing.html", csrf, 404, what="message")
    payload = str(job.payload)
    return render(request, "message.html", csrf, m=job,
                  payload=payload if len(payload) <= 2000 else payload[:2000] + " … (cut)")


@page
async def failures_page(request: Request, csrf: str) -> Response:
    rows = await call(overview.recent_discarded, core(request))
    return render(request, "failures.html", csrf, failures=rows)


@page
async def workers_page(request: Request, csrf: str) -> Response:
    rows = await call(overview.workers, core(request))
    return render(request, "workers.html", csrf, workers=rows,
                  ttl=request.app.state.settings.message_queue_heartbeat_ttl)


@page
async def throughput(request: Request, csrf: str) -> Response:
    """The chart's data: per minute of the last hour, sent, discarded, lateness p50 / p99 (s)."""
    rows = await call(overview.throughput, core(request))
    return JSONResponse([{"minute": iso(r["minute"]), "sent": r["sent"], "discarded": r["discarded"],
                          "latenessP50": r["lateness_p50"], "latenessP99": r["lateness_p99"]} for r in rows],
                        headers={"Cache-Control": "no-store"})


# -- actions -------------------------------------------------------------------------------------


@action
async def pause(request: Request) -> str:
    await call(control.set_paused, core(request), instance_id(request), True)
    return "Instance paused: nothing is sent until it is resumed."


@action
async def resume(request: Request) -> str:
    await call(control.set_paused, core(request), instance_id(request), False)
    return "Instance resumed."


@action
async def cancel_all(request: Request) -> str:
    count = await cancel_all_counted(request, instance_id(request))
    return f"{count} message(s) cancelled."


@action
async def reconnect(request: Request) -> str:
    instance = await call(instances.get, core(request), instance_id(request))
    await session_action(request, instance, "restart", connected=True)
    request.app.state.instances.forget(instance.id)
    return "Reconnect asked."


@action
async def rotate_webhook_secret(request: Request) -> str:
    grace = core(request).settings.webhook_secret_grace
    row = await call(webhooks.rotate_secret, core(request), instance_id(request), grace)
    return (f"Webhook secret rotated: the previous one signs beside it until "
            f"{row['previous_secret_until']:%Y-%m-%d %H:%M:%S} UTC; the new one is at GET …/webhooks.")


@action
async def cancel_message(request: Request) -> str:
    zaap_id = request.path_params["zaap_id"]
    previous = await cancel_counted(request, zaap_id)
    return f"Message {zaap_id} cancelled (it was {previous})."


@action
async def retry_message(request: Request) -> str:
    enqueued = await enqueue.retry_as_new(core(request), request.path_params["zaap_id"])
    return f"Queued again as a new message {enqueued.zaap_id} (sequence {enqueued.sequence}, at the end of the queue)."

