"""The one way out to the internet for what the service fetches or posts on a customer's behalf
(webhook receivers, media URLs, anything later): every customer-supplied URL is an attack until
checked.

- **Addresses.** The client resolves the name itself, refuses any address that is not public
  internet (loopback, private, link-local and cloud metadata, CGNAT, multicast, reserved,
  unspecified, and the IPv4-mapped, 6to4, Teredo and NAT64 forms of those), and connects to the
  very address it checked: there is no second resolution for DNS rebinding to answer. The check
  sits in the connection itself (an httpcore network backend), so every redirect hop and every
  pooled connection goes through it.
- **Schemes.** https only, unless the operator allows plain http (`OUTBOUND_PLAIN_HTTP`, or a
  host of `OUTBOUND_ALLOW`); redirects are followed only where asked, at most `MAX_HOPS`, each
  hop checked like the first.
- **Time.** One deadline per request (connect, TLS, sending, the whole answer), enforced on
  every read and write: an answer that trickles a byte a second ends at the deadline.
- **Size.** Answers are read up to a cap of decoded bytes, decoded here with that cap, so a
  compression bomb stops at the cap.
- **Words.** Failures are `OutboundError`s whose text is ours ("address not allowed", "answer
  too large", "timed out after 10 s", "HTTP 500"): safe to show the customer. Nothing of the
  far end's answer is ever in them.

`OUTBOUND_ALLOW` lets an operator reach named private hosts or networks (some run their webhook
receiver inside their own network): host names, addresses or CIDR networks, each optionally with
`:port`. The default allows none.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import socket
import ssl
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

#: Redirect hops followed where redirects are followed at all (media downloads).
MAX_HOPS = 3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_IPV4_NUMBER = re.compile(r"^(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}$")


class OutboundError(Exception):
    """A request that did not get an answer we accept. Its text is ours, fit for the customer.
    `retryable`: a later try may do better (a timeout, a 5xx, a broken connection); not when
    the request itself is refused (an address, a scheme, a size)."""

    def __init__(self, reason: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status = status


def is_public(ip: IPAddress) -> bool:
    """Whether `ip` is an address of the public internet (and not a wrapper of one that isn't)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public(ip.sixtofour)
        if ip.teredo is not None or ip in _NAT64_LOCAL:
            return False
        if ip in _NAT64:
            return is_public(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.is_site_local:
            return False
    elif ip in _CGNAT:
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback
                                 or ip.is_link_local or ip.is_unspecified)


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, in any form a resolver accepts (`127.1`,
    `2130706433`, `0x7f000001`, `[::ffff:127.0.0.1]`), or None for a name."""
    host = host.strip("[]").split("%", 1)[0].lower()
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _IPV4_NUMBER.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _port_of(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


@dataclass(frozen=True)
class Policy:
    """What may be reached: the public internet over https, and what the operator allows."""

    names: frozenset[tuple[str, int | None]] = frozenset()
    networks: tuple[tuple[IPNetwork, int | None], ...] = ()
    plain_http: bool = False

    @classmethod
    def parse(cls, allow: str, plain_http: bool = False) -> Policy:
        """`OUTBOUND_ALLOW`: comma-separated `name`, `address` or `network`, each with an optional
        `:port` (`hooks.internal`, `10.1.0.0/16`, `127.0.0.1:8443`, `[fd00::1]:443`)."""
        names: set[tuple[str, int | None]] = set()
        networks: list[tuple[IPNetwork, int | None]] = []
        for entry in (e.strip().lower() for e in allow.split(",")):
            if not entry:
                continue
            host, port = entry, None
            match = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\d{1,5})", entry)
            if match:
                host, port = match.group(1), int(match.group(2))
            host = host.strip("[]")
            try:
                networks.append((ipaddress.ip_network(host, strict=False), port))
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"[a-z0-9.\-_]+", host):
                raise ValueError(f"OUTBOUND_ALLOW: {entry!r} is neither a host name, an address nor a network")
            names.add((host.rstrip("."), port))
        return cls(frozenset(names), tuple(networks), plain_http)

    def _named(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".")
        return (host, None) in self.names or (host, port) in self.names

    def _in_networks(self, ip: IPAddress, port: int) -> bool:
        return any(ip in net and allowed in (None, port) for net, allowed in self.networks)

    def address_allowed(self, host: str, ip: IPAddress, port: int) -> bool:
        return self._named(host, port) or self._in_networks(ip, port) or is_public(ip)

    def refusal(self, url: str) -> str | None:
        """Why `url` may not be used, as far as can be told without resolving it (None: it may,
        subject to the connection-time check)."""
        parts = urlsplit(url)
        try:
            port = _port_of(parts.scheme, parts.port)
        except ValueError:
            return "the URL's port is not a number from 0 to 65535"
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            return "must be an http(s) URL"
        ip = literal_address(host)
        allowed = self._named(host, port) or (ip is not None and self._in_networks(ip, port))
        if ip is not None and not allowed and not is_public(ip):
            return "address not allowed: it is not a public internet address"
        if parts.scheme == "http" and not (self.plain_http or allowed):
            return "must be an https URL (plain http only to hosts the operator allows)"
        return None


@lru_cache(maxsize=1)
def policy() -> Policy:
    """The process's policy, from its settings."""
    from service.settings import get_settings

    settings = get_settings()
    return Policy.parse(settings.outbound_allow, settings.outbound_plain_http)


# --- the deadline, per request ------------------------------------------------------------------

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("wmq_outbound_deadline", default=None)
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="wmq-resolve")


def _remaining(timeout: float | None) -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("deadline")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _remaining(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _remaining(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.SyncBackend):
    """Connects only to addresses the policy allows, the ones it checked."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        addresses = self._resolve(host, port, _remaining(timeout))
        refused = [ip for ip in addresses if not self.policy.address_allowed(host, ip, port)]
        if refused:
            raise _Refused("address not allowed: the host is not a public internet address")
        last: Exception | None = None
        for ip in addresses:
            try:
                stream = super().connect_tcp(str(ip), port, _remaining(timeout), local_address, socket_options)
            except httpcore.ConnectError as error:
                last = error
                continue
            return _Stream(stream)
        raise last or httpcore.ConnectError("no address")

    @staticmethod
    def _resolve(host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        future = _RESOLVER.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=timeout)
        except FutureTimeout:
            raise httpcore.ConnectTimeout("resolving") from None
        except OSError:
            raise _Unresolved(host) from None
        found: list[IPAddress] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in found:
                found.append(ip)
        return found


class _Refused(httpcore.ConnectError):
    """The policy refused every address (raised through httpcore, told apart afterwards)."""


class _Unresolved(httpcore.ConnectError):
    pass


# --- the client ---------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes = b""
    url: str = ""
    hops: list[str] = field(default_factory=list)

    @property
    def mimetype(self) -> str | None:
        return self.headers.get("content-type", "").split(";")[0].strip().lower() or None


class Client:
    """The outbound client: one per process (or per use), thread-safe, pooled."""

    def __init__(self, allowed: Policy | None = None, *, max_connections: int = 100) -> None:
        """`allowed`: what may be reached; by default the process's policy (its settings)."""
        self.policy = allowed if allowed is not None else policy()
        transport = httpx.HTTPTransport(trust_env=False)
        # httpx takes no network backend, httpcore does: the pool is httpx's own, re-made with ours.
        transport._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False), max_connections=max_connections,
            max_keepalive_connections=20, keepalive_expiry=5.0, network_backend=_Backend(self.policy))
        self._http = httpx.Client(transport=transport, trust_env=False, follow_redirects=False,
                                  headers={"User-Agent": "wmq", "Accept-Encoding": "gzip, deflate"})

    def post(self, url: str, *, content: bytes, headers: dict[str, str], timeout: float,
             max_bytes: int = 4096) -> Answer:
        """POST once (no redirect followed: a 3xx is an answer like any other); the answer's body
        is read raw up to `max_bytes`, never decoded (a webhook's answer is its status)."""
        with self._deadline(timeout):
            self._check_scheme(url)
            with self._errors(timeout), self._http.stream("POST", url, content=content, headers=headers) as response:
                body = _read_raw(response.iter_raw(), max_bytes)
                return Answer(response.status_code, response.headers, body, url)

    def get(self, url: str, *, timeout: float, max_bytes: int) -> Answer:
        """GET, following up to `MAX_HOPS` redirects (each hop checked as the first); the body
        decoded up to `max_bytes`. Any status is returned: the caller judges it."""
        hops: list[str] = []
        with self._deadline(timeout):
            for _ in range(MAX_HOPS + 1):
                self._check_scheme(url)
                with self._errors(timeout), self._http.stream("GET", url) as response:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        hops.append(url)
                        url = urljoin(url, location)
                        continue
                    body = _read_decoded(response, max_bytes)
                    return Answer(response.status_code, response.headers, body, url, hops)
        raise OutboundError(f"too many redirects (more than {MAX_HOPS})")

    def close(self) -> None:
        self._http.close()

    def _check_scheme(self, url: str) -> None:
        reason = self.policy.refusal(url)
        if reason is not None:
            raise OutboundError(reason)

    @staticmethod
    @contextmanager
    def _deadline(timeout: float) -> Iterator[None]:
        token = _DEADLINE.set(time.monotonic() + timeout)
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    @staticmethod
    @contextmanager
    def _errors(timeout: float) -> Iterator[None]:
        """httpx's errors in our words: never the far end's text, nor an address it resolved to."""
        try:
            yield
        except httpx.TimeoutException:
            raise OutboundError(f"timed out after {timeout:g} s", retryable=True) from None
        except httpx.ConnectError as error:
            cause = error.__context__
            if isinstance(cause, _Refused):
                raise OutboundError(str(cause)) from None
            if isinstance(cause, _Unresolved):
                raise OutboundError("host name not found", retryable=True) from None
            if isinstance(cause, httpcore.ConnectError) and isinstance(cause.__context__, ssl.SSLError):
                raise OutboundError("TLS handshake failed (certificate or protocol)", retryable=True) from None
            raise OutboundError("could not connect", retryable=True) from None
        except (httpx.RemoteProtocolError, httpx.LocalProtocolError):
            raise OutboundError("the answer was not valid HTTP", retryable=True) from None
        except (httpx.ReadError, httpx.WriteError, httpx.CloseError):
            raise OutboundError("the connection broke", retryable=True) from None
        except httpx.UnsupportedProtocol:
            raise OutboundError("must be an http(s) URL") from None
        except httpx.InvalidURL:
            raise OutboundError("the URL is not valid") from None
        except httpx.HTTPError:
            raise OutboundError("the request failed", retryable=True) from None


def _read_raw(chunks: Iterable[bytes], max_bytes: int) -> bytes:
    """Up to `max_bytes` of the body as sent; the rest is left unread (the connection closes)."""
    body = bytearray()
    for chunk in chunks:
        body += chunk[: max_bytes - len(body)]
        if len(body) >= max_bytes:
            break
    return bytes(body)


def _read_decoded(response: httpx.Response, max_bytes: int) -> bytes:
    """The body decoded (identity, gzip, deflate), refused past `max_bytes` of decoded bytes,
    counted while decoding."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise OutboundError(f"the answer's content encoding {encoding[:20]!r} is not supported")
    if response.headers.get("content-length", "").isdigit() and decoder is None \
            and int(response.headers["content-length"]) > max_bytes:
        raise OutboundError(f"answer too large (over {max_bytes} bytes)")
    body = bytearray()
    raw_read = 0
    for chunk in response.iter_raw():
        raw_read += len(chunk)
        while chunk:
            if decoder is None:
                body += chunk
                chunk = b""
            else:
                try:
                    body += decoder.decompress(chunk, max_bytes + 1 - len(body))
                except zlib.error:
                    raise OutboundError(f"the answer's {encoding} data is corrupt") from None
                chunk = decoder.unconsumed_tail
            if len(body) > max_bytes or raw_read > 2 * max_bytes + 65536:
                raise OutboundError(f"answer too large (over {max_bytes} bytes)")
    return bytes(body)
