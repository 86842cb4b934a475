"""Who may call what: an instance's token (and its Client-Token header, when it has one) for
the instance routes, the admin token for the admin routes. Wire names live here, not in the core.

Wrong credentials are throttled per client address (`Failures`): after FAILURE_LIMIT of them
within FAILURE_WINDOW seconds, the address gets 429 with Retry-After on every route that takes a
credential (the admin routes, the dashboard and its login, the instance routes), the right
credential included, until its oldest counted failure is FAILURE_WINDOW old."""

from __future__ import annotations

import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
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


#: Wrong credentials one client address may present within FAILURE_WINDOW seconds; beyond, 429.
FAILURE_LIMIT = 10
FAILURE_WINDOW = 60.0
#: Client addresses whose failures are remembered at most; past it the one whose last failure is
#: oldest is forgotten (each costs ~1 KiB: 10,000 are ~10 MiB).
TRACKED_ADDRESSES = 10_000


class TooManyFailures(ValidationError):
    """429: this client address presented FAILURE_LIMIT wrong credentials within the window."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("credentials", f"too many failed authentications from this address; retry in "
                                        f"{retry_after}s", status=429)
        self.retry_after = retry_after


class Failures:
    """Recent credential failures per client address: a sliding window of the last `limit`
    failures' times, bounded to `capacity` addresses (least recently failed forgotten first).

    A success resets nothing (not even its own address's count: else one valid token would
    let its holder guess others' without end). Thread-safe; every operation is O(limit)."""

    def __init__(self, limit: int = FAILURE_LIMIT, window: float = FAILURE_WINDOW,
                 capacity: int = TRACKED_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.capacity, self.clock = limit, window, capacity, clock
        self.recent: OrderedDict[str, deque[float]] = OrderedDict()
        self.lock = threading.Lock()

    def _current(self, address: str, now: float) -> deque[float] | None:
        times = self.recent.get(address)
        if times is not None:
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self.recent[address]
                return None
        return times

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try again, or None if it may now."""
        with self.lock:
            now = self.clock()
            times = self._current(address, now)
            if times is None or len(times) < self.limit:
                return None
            return max(1, math.ceil(times[0] + self.window - now))

    def failed(self, address: str) -> None:
        with self.lock:
            now = self.clock()
            times = self._current(address, now) or deque(maxlen=self.limit)
            times.append(now)
            self.recent[address] = times
            self.recent.move_to_end(address)
            while len(self.recent) > self.capacity:
                self.recent.popitem(last=False)


def client_address(request: Request) -> str:
    """Who is asking, as the failures are counted: the connection's peer address. uvicorn puts
    there the X-Forwarded-For client only when the peer is a trusted proxy (its
    FORWARDED_ALLOW_IPS, default 127.0.0.1); this module reads no forwarding header itself. An
    IPv6 client counts by its /64, which one host typically holds whole."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def failures(request: Request) -> Failures:
    """The app's one record of failures (admin token, dashboard login, instance tokens alike)."""
    state = request.app.state
    found = getattr(state, "auth_failures", None)
    if found is None:
        found = state.auth_failures = Failures()
    return found  # type: ignore[no-any-return]


def refuse_if_locked_out(request: Request) -> None:
    """429 with Retry-After when this client address failed too often lately; before any check."""
    wait = failures(request).retry_after(client_address(request))
    if wait is not None:
        raise TooManyFailures(wait)


def record_failure(request: Request) -> None:
    failures(request).failed(client_address(request))


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
    for an unknown instance and a wrong token, each counted against the client's address (429
    once it failed too often)."""
    refuse_if_locked_out(request)
    try:
        return await _authenticated(request, cached)
    except ValidationError as error:
        if error.status == 401:
            record_failure(request)
        raise


async def _authenticated(request: Request, cached: bool) -> Instance:
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
    """The admin token as `Authorization: Bearer`; 401 without it, a wrong one also counted
    against the client's address (429 once it failed too often, whatever it sends)."""
    refuse_if_locked_out(request)
    expected = request.app.state.settings.admin_token
    given = request.headers.get("authorization")
    if not expected or given is None or not same_secret(f"Bearer {expected}", given.encode("latin-1")):
        if given is not None:
            record_failure(request)
        raise ValidationError("Authorization", "admin routes need 'Authorization: Bearer <ADMIN_TOKEN>'", status=401)
