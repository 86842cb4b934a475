"""Who may see the dashboard: whoever gave the admin token, in the login form (an HttpOnly,
SameSite=Strict cookie follows) or as `Authorization: Bearer` (scripts and checks).

The cookie holds no token: an expiry and its HMAC under the admin token, so rotating
ADMIN_TOKEN logs every browser out. Actions are POSTs that need, with the cookie, a CSRF token
derived from that cookie (in every form) and, when the browser sends one, an `Origin` of this
host: another site can neither read the token nor make the browser send the cookie along.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

from starlette.requests import Request

from service.api.auth import same_secret

COOKIE = "wmq_dashboard"
#: How long a login lasts.
LIFETIME = 12 * 3600


class NotLoggedIn(Exception):
    """The request carries neither a valid session cookie nor the admin token."""


class CrossSite(Exception):
    """An action without this dashboard's CSRF token or from another origin."""


def _admin_token(request: Request) -> str:
    token = request.app.state.settings.admin_token
    if not token:
        raise NotLoggedIn
    return str(token)


def _sign(key: str, text: str) -> str:
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def new_session(request: Request) -> str:
    expires = int(time.time()) + LIFETIME
    return f"{expires}.{_sign(_admin_token(request), f'session:{expires}')}"


def token_matches(request: Request, given: str) -> bool:
    return same_secret(_admin_token(request), given.encode("utf-8", "surrogateescape"))


def bearer(request: Request) -> bool:
    """The admin token as `Authorization: Bearer` (no cookie, so no cross-site risk)."""
    header = request.headers.get("authorization")
    return header is not None and same_secret(f"Bearer {_admin_token(request)}", header.encode("latin-1"))


def session(request: Request) -> str | None:
    """The request's valid session cookie, if any."""
    value = request.cookies.get(COOKIE, "")
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return None
    if not same_secret(_sign(_admin_token(request), f"session:{expires}"), signature.encode("latin-1", "replace")):
        return None
    return value


def require(request: Request) -> str:
    """The CSRF token for this request's forms; NotLoggedIn without a session or the token."""
    if bearer(request):
        return ""
    value = session(request)
    if value is None:
        raise NotLoggedIn
    return csrf_token(request, value)


def csrf_token(request: Request, session_value: str) -> str:
    return _sign(_admin_token(request), f"csrf:{session_value}")


def check_action(request: Request, form: dict[str, str]) -> None:
    """An action (POST) is allowed with the bearer token, or with the cookie, the form's CSRF
    token and, if the browser says where it comes from, this very host."""
    if bearer(request):
        return
    expected = require(request)
    if not same_secret(expected, form.get("csrf", "").encode("utf-8", "surrogateescape")):
        raise CrossSite
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise CrossSite
