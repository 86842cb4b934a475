"""The dial gate: a CONNECT proxy on 127.0.0.1 that every session client of this process dials
WhatsApp through, so that this process knows, in order, what its Go side is doing.

- A client's dial is the first thing `Neonize()` does after writing neonize's maps, so its
  arrival here ends that connect's exclusive hold (registry.py) without a grace period, while the
  store is as slow as it is, and before the dial and handshake, which hold nothing exclusive.
- Each client may dial once: the dial of its connect. whatsmeow's own reconnects (after a lost
  connection, a 515, a keepalive reset) are refused here and reported to the session, which makes
  a connect of its own after checking that this worker still holds the instance's lease (a worker
  that stood still past its lease must not take the connection back from the new owner).
- A stop first cuts its client's tunnels, so that whatsmeow's `Disconnect` never waits for a
  dial's socket lock.

Only the websocket goes through the gate (its TLS passes untouched); media uploads go direct or
through `WHATSAPP_PROXY`, which the gate also uses upstream (`http://` or `socks5://`).
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

logger = logging.getLogger("wmq.whatsapp")

HEAD_LIMIT = 8192
HEAD_TIMEOUT = 10.0
UPSTREAM_TIMEOUT = 30.0
CHUNK = 65536


class GateRefused(Exception):
    """The dial is not let through (the reason goes back to Go in the proxy's answer)."""


@dataclass
class Entry:
    key: str
    #: The dial of the client's connect: returns whether it may go on (raises GateRefused otherwise).
    on_dial: Callable[[], None]
    #: whatsmeow dialling again by itself (refused): the session reconnects on its own terms.
    on_redial: Callable[[], None]
    #: WhatsApp's first bytes for the client are about to pass (registry.py `Connecting.inbound`).
    on_inbound: Callable[[], None] = lambda: None
    #: The connect the entry is for (registry.py `Connecting`): a stop of that connect closes it only.
    tag: object = None
    dialed: bool = False
    closed: bool = False
    tunnels: set[socket.socket] = field(default_factory=set)


def _read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(1024)
        if not chunk or len(data) > HEAD_LIMIT:
            raise GateRefused("incomplete proxy request")
        data += chunk
    return data


def parse_connect(head: bytes) -> tuple[str, int, str]:
    """(host, port, token) of a `CONNECT host:port` with Basic proxy credentials (the token)."""
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.split(" ", 1)[0]
    if method != "CONNECT" or ":" not in target:
        raise GateRefused(f"not a CONNECT: {lines[0][:80]}")
    host, _, port = target.rpartition(":")
    token = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "proxy-authorization":
            scheme, _, encoded = value.strip().partition(" ")
            if scheme.lower() == "basic":
                token = base64.b64decode(encoded).decode("latin-1").partition(":")[0]
    return host.strip("[]"), int(port), token


def _socks5(conn: socket.socket, host: str, port: int, user: str | None, password: str | None) -> None:
    methods = b"\x00\x02" if user else b"\x00"
    conn.sendall(b"\x05" + bytes([len(methods)]) + methods)
    reply = _recv_exact(conn, 2)
    if reply[1] == 0x02 and user:
        name, secret = user.encode(), (password or "").encode()
        conn.sendall(b"\x01" + bytes([len(name)]) + name + bytes([len(secret)]) + secret)
        if _recv_exact(conn, 2)[1] != 0:
            raise GateRefused("the SOCKS5 proxy refused the credentials")
    elif reply[1] != 0x00:
        raise GateRefused("the SOCKS5 proxy accepts none of our methods")
    name = host.encode()
    conn.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port))
    answer = _recv_exact(conn, 4)
    if answer[1] != 0:
        raise GateRefused(f"the SOCKS5 proxy could not connect (code {answer[1]})")
    skip = {1: 4, 4: 16}.get(answer[3])
    _recv_exact(conn, (skip if skip is not None else _recv_exact(conn, 1)[0]) + 2)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise GateRefused("the upstream proxy closed the connection")
        data += chunk
    return data


def open_upstream(host: str, port: int, proxy: str | None, timeout: float = UPSTREAM_TIMEOUT) -> socket.socket:
    """A TCP connection to host:port, direct or through the operator's proxy."""
    if not proxy:
        return socket.create_connection((host, port), timeout=timeout)
    parts = urlsplit(proxy)
    if parts.scheme not in ("http", "socks5", "socks5h") or not parts.hostname:
        raise GateRefused(f"unsupported proxy {parts.scheme}://")
    default_port = 1080 if parts.scheme.startswith("socks") else 8080
    conn = socket.create_connection((parts.hostname, parts.port or default_port), timeout=timeout)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    try:
        if parts.scheme.startswith("socks"):
            _socks5(conn, host, port, user, password)
        else:
            auth = ""
            if user:
                basic = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
                auth = f"Proxy-Authorization: Basic {basic}\r\n"
            conn.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
            status = _read_head(conn).split(b"\r\n", 1)[0].split(b" ")
            if len(status) < 2 or status[1] != b"200":
                raise GateRefused(f"the proxy answered {b' '.join(status[1:]).decode('latin-1')[:80]}")
    except BaseException:
        conn.close()
        raise
    return conn


def _pump(source: socket.socket, sink: socket.socket, first: Callable[[], None] | None = None) -> None:
    """Copy until either side ends; `first` runs before the first chunk is passed on."""
    try:
        while chunk := source.recv(CHUNK):
            if first is not None:
                first, call = None, first
                call()
            sink.sendall(chunk)
    except (OSError, TimeoutError):
        pass
    finally:
        for conn, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            try:
                conn.shutdown(how)
            except OSError:
                pass


class Gate:
    """The gate of this process (`GATE`); `upstream` replaces the dialled address (tests)."""

    def __init__(self, *, proxy: str | None = None, upstream: tuple[str, int] | None = None) -> None:
        self.proxy = proxy
        self.upstream = upstream
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._tokens: dict[str, str] = {}
        self._listener: socket.socket | None = None
        #: For tests: (key, what) in the order the gate saw them: dial, redial, refused, tunnel (the
        #: latest ones only: a worker lives for weeks).
        self.log: deque[tuple[str, str]] = deque(maxlen=10_000)

    def _listen(self) -> socket.socket:
        if self._listener is None:
            listener = socket.create_server(("127.0.0.1", 0))
            threading.Thread(target=self._accept, args=(listener,), daemon=True, name="whatsapp-gate").start()
            self._listener = listener
        return self._listener

    def open(self, key: str, on_dial: Callable[[], None], on_redial: Callable[[], None],
             on_inbound: Callable[[], None] | None = None, tag: object = None) -> str:
        """The proxy URL for the client `key`'s next connect (one dial)."""
        token = secrets.token_hex(16)
        with self._lock:
            port = self._listen().getsockname()[1]
            old = self._tokens.pop(key, None)
            if old is not None:
                self._entries.pop(old, None)
            self._entries[token] = Entry(key, on_dial, on_redial, on_inbound or (lambda: None), tag)
            self._tokens[key] = token
        return f"http://{token}@127.0.0.1:{port}"

    def close(self, key: str, tag: object = None) -> None:
        """Refuse the client's dials from now on and cut its tunnels (with `tag`: only if its
        current entry is that connect's)."""
        with self._lock:
            entry = self._entries.get(self._tokens.get(key, ""))
            if entry is None or (tag is not None and entry.tag is not tag):
                return
            entry.closed = True
            tunnels = list(entry.tunnels)
        for conn in tunnels:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def forget(self, key: str) -> None:
        with self._lock:
            self._entries.pop(self._tokens.pop(key, ""), None)

    def _accept(self, listener: socket.socket) -> None:
        """Serve each dial in a thread; a failure to accept or to start one (out of descriptors or
        threads) refuses that dial only, never the ones after it."""
        while True:
            conn: socket.socket | None = None
            try:
                conn, _ = listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True, name="whatsapp-gate-dial").start()
            except (OSError, RuntimeError):
                logger.exception("the dial gate could not take a dial")
                if conn is not None:
                    conn.close()
                time.sleep(0.1)

    def _serve(self, conn: socket.socket) -> None:
        entry: Entry | None = None
        try:
            conn.settimeout(HEAD_TIMEOUT)
            host, port, token = parse_connect(_read_head(conn))
            with self._lock:
                entry = self._entries.get(token)
            self._admit(token)
            with self._lock:
                assert entry is not None
                entry.tunnels.add(conn)  # a stop cuts the dial while the upstream is still being reached
            upstream = open_upstream(*(self.upstream or (host, port)), self.proxy)
        except (GateRefused, OSError, ValueError) as error:
            if entry is not None:
                with self._lock:
                    entry.tunnels.discard(conn)
            self._refuse(conn, entry, str(error))
            return
        conn.settimeout(None)
        upstream.settimeout(None)
        with self._lock:
            if entry.closed:
                upstream.close()
                self._refuse(conn, entry, "the client was stopped")
                return
            entry.tunnels.update((conn, upstream))
            self.log.append((entry.key, "tunnel"))
        try:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            back = threading.Thread(target=_pump, args=(upstream, conn, entry.on_inbound), daemon=True,
                                    name="whatsapp-gate-in")
            back.start()
            _pump(conn, upstream)
            back.join()
        except (OSError, RuntimeError):
            pass  # cut by a stop, or no thread to relay with: the client's connect fails
        finally:
            with self._lock:
                entry.tunnels.difference_update((conn, upstream))
            conn.close()
            upstream.close()

    def _admit(self, token: str) -> Entry:
        """The client's first dial goes on (its connect says whether); any later one is refused."""
        with self._lock:
            entry = self._entries.get(token)
            if entry is None or entry.closed:
                raise GateRefused("unknown or stopped client")
            first, entry.dialed = not entry.dialed, True
            self.log.append((entry.key, "dial" if first else "redial"))
        if not first:
            threading.Thread(target=entry.on_redial, daemon=True).start()
            raise GateRefused("whatsmeow reconnects by itself: the session reconnects on its own terms")
        entry.on_dial()
        return entry

    def _refuse(self, conn: socket.socket, entry: Entry | None, reason: str) -> None:
        with self._lock:
            self.log.append((entry.key if entry else "?", "refused"))
        try:
            conn.sendall(f"HTTP/1.1 403 Forbidden\r\nX-Reason: {reason[:200]}\r\n\r\n".encode("latin-1", "replace"))
        except OSError:
            pass
        conn.close()


#: The gate of this process (the manager sets its `proxy` from WHATSAPP_PROXY).
GATE = Gate()
