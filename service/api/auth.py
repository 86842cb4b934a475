"""Who may call what: an instance's token (and its Client-Token header, when it has one) for
the instance routes, the admin token for the admin routes. Wire names live here, not in the core."""

from __future__ import annotations

import secrets
import time
from uuid import UUID

from starlette.requests import Request

from service.api.schemas import ValidationError
from service.core import instances
from service.core.context import Core
from service.core.errors import InstanceNotFound
from service.core.models import Instance

CLIENT_TOKEN_HEADER = "Client-Token"
#: The one answer to an unknown instance, a wrong token and another instance's token alike: no
#: caller learns which instances exist.
UNAUTHORIZED = "unknown instance or invalid token"


def instance_id_from(request: Request) -> UUID:
    try:
        return UUID(request.path_params["instance"])
    except ValueError:
        raise ValidationError("instance", "instance id must be a UUID", status=404) from None


def same_secret(expected: str, given: bytes) -> bool:
    """Constant-time comparison of two secrets, as bytes: `compare_digest` refuses non-ASCII
    text, and a token or header with any would have made every route of the instance a 500."""
    return secrets.compare_digest(expected.encode("utf-8", "surrogateescape"), given)


def check_credentials(instance: Instance, token: str, client_token: bytes | None) -> Instance:
    """`instance`, if `token` (from the path) and `client_token` (the header's bytes, when the
    instance has one) match; 401 if not."""
    if not same_secret(instance.token, token.encode("utf-8", "surrogateescape")):
        raise ValidationError("token", UNAUTHORIZED, status=401)
    if instance.client_token and not same_secret(instance.client_token, client_token or b""):
        raise ValidationError(CLIENT_TOKEN_HEADER, f"missing or invalid {CLIENT_TOKEN_HEADER} header", status=401)
    return instance


class InstanceCache:
    """Instances by id for a few seconds, so the hot send path authenticates without a query.

    Only the credentials are trusted from it: a removed instance is still refused (its enqueue
    finds no queue: 404), and every other route reads the instance afresh."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self.entries: dict[UUID, tuple[float, Instance]] = {}

    def get(self, instance_id: UUID) -> Instance | None:
        entry = self.entries.get(instance_id)
        if entry is None or entry[0] < time.monotonic():
            self.entries.pop(instance_id, None)
            return None
        return entry[1]

    def forget(self, instance_id: UUID) -> None:
        """Drop an instance whose record changed (its token, its connection), so that this
        process's next request reads it afresh."""
        self.entries.pop(instance_id, None)

    def put(self, instance: Instance) -> None:
        if len(self.entries) > 100_000:
            self.entries.clear()
        self.entries[instance.id] = (time.monotonic() + self.ttl, instance)


async def authenticated(request: Request, *, cached: bool = False) -> Instance:
    """The instance named in the path, if its token (and Client-Token header) match; 401 alike
    for an unknown instance and a wrong token."""
    try:
        instance_id = UUID(request.path_params["instance"])
    except ValueError:
        raise ValidationError("token", UNAUTHORIZED, status=401) from None
    cache: InstanceCache = request.app.state.instances
    instance = cache.get(instance_id) if cached else None
    if instance is None:
        core: Core = request.app.state.core
        try:
            instance = await instances.get_async(core, instance_id)
        except InstanceNotFound:
            raise ValidationError("token", UNAUTHORIZED, status=401) from None
        cache.put(instance)
    return check_credentials(instance, request.path_params["token"], header_bytes(request, CLIENT_TOKEN_HEADER))


def header_bytes(request: Request, name: str) -> bytes | None:
    """A header as sent (Starlette decodes headers as latin-1, which encodes back losslessly)."""
    value = request.headers.get(name)
    return None if value is None else value.encode("latin-1")


def require_admin(request: Request) -> None:
    expected = request.app.state.settings.admin_token
    given = request.headers.get("authorization", "")
    if not expected or not same_secret(f"Bearer {expected}", given.encode("latin-1")):
        raise ValidationError("Authorization", "admin routes need 'Authorization: Bearer <ADMIN_TOKEN>'", status=401)
