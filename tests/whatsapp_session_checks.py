"""Checks of the session side (registry, gate, leases) that load neonize's Go library, run one per
subprocess by tests/test_neonize_sessions.py (a Go panic ends the process it happens in, never
pytest's). Each check asserts, prints its result and exits 0.

    python -m tests.whatsapp_session_checks storm
    DATABASE_URL=… python -m tests.whatsapp_session_checks slow_store
"""

from __future__ import annotations

import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from neonize.events import ConnectedEv, ConnectFailureEv, StreamReplacedEv
from neonize.proto.Neonize_pb2 import ConnectFailureReason

from tests.gate_client import proxy_connect
from tests.stack import wait_until
from tests.whatsapp_checks import FakeStore
from workers.transports.base import InstanceDisconnected, RetryableSendError
from workers.transports.neonize import registry
from workers.transports.neonize.gate import GATE
from workers.transports.neonize.registry import REGISTRY

JID = "5511988887777:12@s.whatsapp.net"


class GoMaps:
    """neonize's maps as the fakes use them: a write and a read at once is the fatal Go error."""

    def __init__(self) -> None:
        self.writing = 0
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def write(self, what: str, seconds: float) -> None:
        with self._lock:
            self.writing += 1
            if not REGISTRY.exclusive:
                self.violations.append(f"{what}: a map write without the exclusive side")
        time.sleep(seconds)
        with self._lock:
            self.writing -= 1

    def read(self, what: str) -> None:
        if self.writing:
            self.violations.append(f"{what}: a map read during a write")


MAPS = GoMaps()


class FakeEvents:
    def __init__(self) -> None:
        self.handlers: dict[type, Callable[[Any, Any], None]] = {}

    def __call__(self, kind: type) -> Callable[[Callable[[Any, Any], None]], None]:
        def register(handler: Callable[[Any, Any], None]) -> None:
            self.handlers[kind] = handler
        return register


class FakeClient:
    """neonize's client as the registry meets it: `connect` writes the maps (for `write_time`),
    dials through the proxy it is given (the real gate), waits `handshake` (or, if `hang`, until
    its tunnel is cut), reads the maps, makes its first callback, and stays up until stopped."""

    connects = 0

    def __init__(self, url: str, key: str, jid: Any, *, handshake: float = 0.05, write_time: float = 0.005,
                 hang: bool = False) -> None:
        self.uuid = key.encode()
        self.event = FakeEvents()
        self.handshake = handshake
        self.write_time = write_time
        self.hang = hang
        self.stopped = threading.Event()
        self.connected_at: float | None = None
        self.sock: socket.socket | None = None

    def connect(self, proxy: Any) -> None:
        FakeClient.connects += 1
        self.stopped.clear()
        MAPS.write("Neonize", self.write_time)
        self.sock = self.dial(proxy.proxy_address)
        self.sock.settimeout(None)
        time.sleep(self.handshake)
        self.sock.sendall(b"C")  # the handshake's first message (TLS speaks first from the client)
        greeting = self.sock.recv(1)  # and WhatsApp's answer, which it needs to go on
        if self.hang and greeting:
            self.sock.recv(1)  # stuck mid-handshake, until the gate cuts the tunnel
        if self.hang or not greeting:
            raise RuntimeError("failed to dial whatsapp web websocket: connection cut")
        MAPS.read("CallbackFunction")
        registry.CONNECTS[self.uuid.decode()].alive()  # Go's first callback (event 0)
        self.push(ConnectedEv())
        self.stopped.wait()

    def dial(self, proxy_address: str) -> socket.socket:
        parts = urlsplit(proxy_address)
        assert parts.port is not None and parts.username is not None
        sock, answer = proxy_connect(parts.port, parts.username)
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            sock.close()
            raise RuntimeError(f"failed to dial whatsapp web websocket: {answer[:60]!r}")
        return sock

    def push(self, event: Any) -> None:
        handler = self.event.handlers.get(type(event))
        if handler is not None:
            handler(self, event)

    def stop(self) -> None:
        MAPS.write("Stop", 0.001)
        self.stopped.set()


def holding_server(greet: bool = True) -> tuple[str, int]:
    """WhatsApp's side of a tunnel: accepts, answers the handshake's first message (or, not
    `greet`, nothing: a network that swallows the dial) and keeps the connection open."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def answer(conn: socket.socket) -> None:
        try:
            if conn.recv(1):
                conn.sendall(b"H")
        except OSError:
            pass

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            held.append(conn)
            if greet:
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()


def storm() -> None:
    """200 sessions on one worker connect at once (a pod start): the sessions that are up send
    their backlog at once, no send is refused as retryable, no map is read during a write, and a
    restart during a hung connect holds no other instance's call up."""
    from workers.transports.neonize.sessions import Session

    seed = int(os.environ.get("SEED") or random.randrange(1 << 30))
    print(f"seed {seed}")
    rng = random.Random(seed)
    GATE.upstream = holding_server()
    scale = 0.03  # a 1–3 s connect, time-compressed
    count, backlog = 200, 20
    sessions = []
    for _ in range(count):
        handshake = rng.uniform(1, 3) * scale

        def factory(url: str, key: str, jid: Any, handshake: float = handshake) -> FakeClient:
            return FakeClient(url, key, jid, handshake=handshake)

        sessions.append(Session(uuid.uuid4(), FakeStore(), JID, lambda *a: None,  # type: ignore[arg-type]
                                announce_available=False, client_factory=factory))
    retryable: list[str] = []
    snoozed = [0]
    delays: list[float] = []

    def send(session: Session, messages: int) -> None:
        """The transport's order: a session that is not up snoozes the head (no attempt)."""
        wait_until(lambda: session.connected, 120, "the session to connect", interval=0.005)
        up = time.monotonic()
        sent = 0
        while sent < messages:
            try:
                REGISTRY.read(lambda: MAPS.read("SendMessage"))
                sent += 1
                if sent == 1:
                    delays.append(time.monotonic() - up)
            except InstanceDisconnected:
                snoozed[0] += 1
                time.sleep(0.01)
            except RetryableSendError as error:
                retryable.append(str(error))
                return

    senders = [threading.Thread(target=send, args=(s, 5)) for s in sessions[:backlog]]
    started = time.monotonic()
    for session in sessions:
        session.start()
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(120)
    wait_until(lambda: all(s.connected for s in sessions), 120, "every session to connect", interval=0.005)
    storm_seconds = time.monotonic() - started
    assert not retryable, retryable
    assert len(delays) == backlog, "every backlog was sent"
    assert max(delays) < 0.5, f"a backlog waited {max(delays):.2f}s after its session was up (seed {seed})"
    assert not MAPS.violations, MAPS.violations[:5]
    assert REGISTRY.stats["longest_exclusive"] < 0.5, REGISTRY.stats

    # A restart during a hung connect: the other instances' calls go on.
    hung = sessions[-1]
    hung.client_factory = lambda url, key, jid: FakeClient(url, key, jid, hang=True)
    hung.restart()

    def hanging() -> bool:
        client = hung.client
        connecting = registry.CONNECTS.get(client.uuid.decode()) if client is not None else None
        return hung.state == "connecting" and connecting is not None and connecting.phase == "active"

    wait_until(hanging, 10, "the connect to hang", interval=0.005)
    hung.client_factory = FakeClient  # the restart's new client connects
    waits: list[float] = []
    restarted = threading.Thread(target=hung.restart)
    restarted.start()
    for _ in range(50):
        asked = time.monotonic()
        REGISTRY.read(lambda: MAPS.read("SendMessage"))
        waits.append(time.monotonic() - asked)
        time.sleep(0.005)
    restarted.join(5)
    assert max(waits) < 0.2, f"a call waited {max(waits):.2f}s during a restart of a hung connect"
    wait_until(lambda: hung.connected, 20, "the restarted session to connect", interval=0.005)
    assert not MAPS.violations, MAPS.violations[:5]
    for session in sessions:
        session.stop(timeout=2)
    print(f"storm: {count} sessions up in {storm_seconds:.1f}s, 0 retryable, {snoozed[0]} snoozes, backlog sent"
          f" {max(delays) * 1000:.0f} ms at worst after its session was up, longest exclusive hold"
          f" {REGISTRY.stats['longest_exclusive'] * 1000:.0f} ms, a restart during a hung connect held calls"
          f" {max(waits) * 1000:.0f} ms at worst")


def quiet_dial() -> None:
    """A dial that WhatsApp never answers (a network that swallows it) holds no other connect
    up: until its first bytes come through the gate the client cannot reach its own map reads, so
    the next session writes its maps and comes up while the first still hangs."""
    from workers.transports.neonize.sessions import Session

    quiet, answering = holding_server(greet=False), holding_server()
    GATE.upstream = quiet
    hung = Session(uuid.uuid4(), FakeStore(), JID, lambda *a: None,  # type: ignore[arg-type]
                   announce_available=False, client_factory=lambda url, key, jid: FakeClient(url, key, jid, hang=True))
    hung.start()

    def swallowed() -> bool:
        client = hung.client
        connecting = registry.CONNECTS.get(client.uuid.decode()) if client is not None else None
        return connecting is not None and connecting.phase == "quiet"

    wait_until(swallowed, 10, "the first dial to be swallowed", interval=0.005)
    GATE.upstream = answering
    other = Session(uuid.uuid4(), FakeStore(), JID, lambda *a: None,  # type: ignore[arg-type]
                    announce_available=False, client_factory=FakeClient)
    started = time.monotonic()
    other.start()
    wait_until(lambda: other.connected, 5, "the next session to connect beside a swallowed dial", interval=0.005)
    took = time.monotonic() - started
    assert hung.state == "connecting", hung.state
    assert not MAPS.violations, MAPS.violations[:5]
    for session in (hung, other):
        session.stop(timeout=2)
    print(f"quiet dial: the next session came up in {took * 1000:.0f} ms beside a dial that was never answered")


def stale_stop() -> None:
    """A stop meant for one connect never stops the client's next one: two events of a connect
    each ask for its stop, the first ends it and the session reconnects with the same client, and
    the second, late, finds that connect over and leaves the new one alone."""
    from neonize.events import StreamErrorEv

    from workers.transports.neonize.registry import stop_client
    from workers.transports.neonize.sessions import Session

    GATE.upstream = holding_server()
    clients: list[FakeClient] = []

    def factory(url: str, key: str, jid: Any) -> FakeClient:
        clients.append(FakeClient(url, key, jid))
        return clients[-1]

    session = Session(uuid.uuid4(), FakeStore(), JID, lambda *a: None,  # type: ignore[arg-type]
                      announce_available=False, client_factory=factory)
    session.start()
    wait_until(lambda: session.connected, 10, "the first connect", interval=0.005)
    client = session.client
    assert client is not None
    key = client.uuid.decode()
    first = registry.CONNECTS[key]
    before = FakeClient.connects
    client.push(StreamErrorEv(Code="503"))  # the first stop of that connect
    wait_until(lambda: FakeClient.connects > before and session.connected and registry.CONNECTS.get(key)
               not in (None, first), 10, "the session to reconnect with the same client", interval=0.005)
    assert session.client is client and len(clients) == 1
    second = registry.CONNECTS[key]
    stop_client(client, connect=first)  # the late one
    time.sleep(0.2)
    assert registry.CONNECTS.get(key) is second and second.phase == "up" and not client.stopped.is_set(), \
        "a late stop of a finished connect stopped the next one"
    assert session.connected
    session.stop(timeout=2)
    print("stale stop: a late stop of a finished connect left the next one up")


def leases() -> None:
    """Only the session's own loop reconnects, and only while this worker holds the lease's fence:
    whatsmeow's own reconnect is refused at the gate; a stale session ends itself; `replaced` while
    holding the lease takes the connection back after a backoff; an unknown refusal backs off far."""
    from workers.transports.neonize import sessions as module
    from workers.transports.neonize.sessions import LEASE_LOST_DETAIL, Session

    GATE.upstream = holding_server()
    module.REPLACED_FIRST = 0.2
    fence = {"now": 1}
    states: list[tuple[str, str | None]] = []
    clients: list[FakeClient] = []

    def factory(url: str, key: str, jid: Any) -> FakeClient:
        clients.append(FakeClient(url, key, jid))
        return clients[-1]

    def session_with(check: Callable[[], bool]) -> Session:
        return Session(uuid.uuid4(), FakeStore(), JID, lambda i, s, d, e: states.append((s, d)),  # type: ignore[arg-type]
                       announce_available=False, client_factory=factory, may_connect=check)

    # A worker that stood still: its lease moved (fence 2), and whatsmeow reconnects by itself.
    stale = session_with(lambda: fence["now"] == 1)
    stale.start()
    wait_until(lambda: stale.connected, 10, "the first connect", interval=0.005)
    before = FakeClient.connects
    fence["now"] = 2
    client = stale.client
    assert client is not None
    try:
        client.dial(_proxy_of(client))
    except RuntimeError as error:
        assert "403" in str(error), error
    else:
        raise AssertionError("whatsmeow's own reconnect went through the gate")
    wait_until(lambda: stale.ended, 10, "the stale session to end itself", interval=0.005)
    assert stale.state == "disconnected" and stale.detail == LEASE_LOST_DETAIL, (stale.state, stale.detail)
    assert FakeClient.connects == before, "a session whose lease moved connected again"
    assert (client.uuid.decode(), "redial") in GATE.log
    stale.thread.join(5)
    assert not stale.thread.is_alive()

    # The owner replaced while it holds the lease takes the connection back after a backoff.
    fence["now"] = 1
    owner = session_with(lambda: fence["now"] == 1)
    owner.start()
    wait_until(lambda: owner.connected, 10, "the owner's connect", interval=0.005)
    before = FakeClient.connects
    assert owner.client is not None
    replaced_at = time.monotonic()
    owner.client.push(StreamReplacedEv())
    wait_until(lambda: FakeClient.connects > before and owner.connected, 10,
               "the owner to take the session back", interval=0.005)
    assert time.monotonic() - replaced_at >= 0.2, "taken back before its backoff"
    assert any(s == "replaced" and d and "taking it back in 0.2s" in d for s, d in states), states

    # Replaced where the lease moved: terminal for this worker, and no connect.
    fence["now"] = 3
    before = FakeClient.connects
    assert owner.client is not None
    owner.client.push(StreamReplacedEv())
    wait_until(lambda: owner.ended, 10, "the replaced, leaseless session to end", interval=0.005)
    assert FakeClient.connects == before

    # An unknown refusal: the next attempt waits longer each time, and the reason says so.
    fence["now"] = 1
    refused = session_with(lambda: True)
    assert refused.client is not None
    for expected in ("60s", "120s", "240s"):
        refused.client.push(ConnectFailureEv(Reason=ConnectFailureReason.Value("GENERIC"), Message="odd"))
        assert refused.state == "connect_failed" and refused.detail is not None
        assert refused.detail.startswith("WhatsApp refused the connection (GENERIC: odd), a refusal with no known")
        assert refused.detail.endswith(f"next attempt in {expected}"), refused.detail
    refused.restart()
    assert refused._unknown_failures == 0 and refused._retry_after is None
    for session in (stale, owner):
        session.stop(timeout=2)
    print("leases: whatsmeow's own reconnect refused, a stale session ends itself, the owner takes a replaced"
          " session back, unknown refusals back off")


def _proxy_of(client: FakeClient) -> str:
    """The proxy URL the gate gave this client's connect (its token), as whatsmeow would redial."""
    key = client.uuid.decode()
    token = GATE._tokens[key]
    port = GATE._listener.getsockname()[1]  # type: ignore[union-attr]
    return f"http://{token}@127.0.0.1:{port}"


class SlowProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL that holds every new connection `delay`
    seconds before connecting it: the session store made slow."""

    def __init__(self, target: Callable[[], socket.socket], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.server.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        time.sleep(self.delay)
        upstream = self.target()

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)


def slow_store() -> None:
    """With the store slowed past the old 3 s grace, no call is admitted before neonize has
    written its maps: the exclusive hold ends when the client's dial reaches the gate, an event
    that comes after the writes, not after a fixed time."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from tests.whatsmeow_rows import insert_device
    from workers.transports.neonize.sessions import Session
    from workers.transports.neonize.store import Store, init_store

    database_url = os.environ["DATABASE_URL"]
    init_store(database_url, "whatsmeow")
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert_device(conn, JID)
    params = conninfo_to_dict(database_url)
    host, port = str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)

    def target() -> socket.socket:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(f"{host}/.s.PGSQL.{port}")
            return sock
        return socket.create_connection((host, port))

    delay = 3.5
    proxy = SlowProxy(target, delay)
    slow_url = make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
    GATE.upstream = ("127.0.0.1", 9)  # no WhatsApp here: the tunnel fails after the gate let it through
    states: list[tuple[str, str | None]] = []
    session = Session(uuid.uuid4(), Store(slow_url, "whatsmeow"), JID,
                      lambda i, s, d, e: states.append((s, d)), announce_available=False)
    dialed: list[float] = []
    on_dial = session._on_dial

    def timed_dial(*args: Any) -> None:
        dialed.append(time.monotonic())
        on_dial(*args)

    session._on_dial = timed_dial  # type: ignore[method-assign]
    admitted: list[float] = []
    refused = [0]
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                REGISTRY.read(lambda: admitted.append(time.monotonic()))
            except InstanceDisconnected:
                refused[0] += 1
            time.sleep(0.01)

    started = time.monotonic()
    connecting = threading.Thread(target=session._connect_once)
    connecting.start()
    wait_until(lambda: REGISTRY.exclusive, 5, "the connect to take the exclusive side", interval=0.005)
    reading = threading.Thread(target=reader)
    reading.start()
    connecting.join(60)
    done.set()
    reading.join(10)
    assert dialed, f"the client never dialled: {states}"
    writes = dialed[0] - started
    assert writes > 3.0, f"the store was not slow enough to pass the old grace: writes took {writes:.1f}s"
    early = [t - started for t in admitted if started < t < dialed[0]]
    assert not early, f"calls admitted before neonize's writes were done: at {early[:3]} s, writes at {writes:.1f}s"
    assert any(t > dialed[0] for t in admitted), "no call was admitted after the writes"
    assert states[-1][0] == "disconnected" and "failed to dial" in (states[-1][1] or ""), states[-1]
    print(f"slow store: writes done at {writes:.1f}s (old grace 3s), no call admitted before them"
          f" ({refused[0]} waited past READ_WAIT and snoozed), {len(admitted)} after")


def time_lock() -> None:
    """WhatsApp's reach-out time-lock (463) on a send: nothing was delivered; the session shows
    `restricted` with the reason and the next try, sends wait without reaching WhatsApp, the
    restriction lifts by itself after its wait (doubled at the next lock in a row), a delivered
    send starts the count again, and a restart lifts it at once."""
    from types import SimpleNamespace

    from tests.whatsapp_checks import text_message, transport_for
    from workers.transports.neonize import sessions as module
    from workers.transports.neonize.sessions import Session

    GATE.upstream = holding_server()
    module.RESTRICTED_FIRST = 0.3
    states: list[tuple[str, str | None]] = []
    refuse = {"next": True}
    frames: list[Any] = []

    class Client(FakeClient):
        def send_message(self, jid: Any, message: Any) -> Any:
            frames.append(message)
            if refuse["next"]:
                raise RuntimeError("failed to send message: server returned error 463")
            return SimpleNamespace(ID="3EB0SENT")

    session = Session(uuid.uuid4(), FakeStore(), JID, lambda i, s, d, e: states.append((s, d)),  # type: ignore[arg-type]
                      announce_available=False, client_factory=lambda url, key, jid: Client(url, key, jid))
    session.start()
    wait_until(lambda: session.connected, 10, "the connect", interval=0.005)
    transport = transport_for(session, timeout=5, threads=2)
    instance_id = session.instance_id

    def refused_waits(in_a_row: int, wait: str) -> None:
        try:
            transport.send(text_message(instance_id, "hello, new contact"))
        except InstanceDisconnected as error:
            assert str(error).startswith("restricted: WhatsApp's reach-out time-lock (463)"), error
        else:
            raise AssertionError("a 463 must make the message wait")
        state, detail = states[-1]
        assert state == "restricted" and detail is not None, states[-1]
        assert f"({in_a_row} in a row; restart to try now)" in detail and "sends wait until" in detail, detail
        sent = len(frames)
        try:
            transport.send(text_message(instance_id, "another"))
        except InstanceDisconnected as error:
            assert str(error).startswith("restricted:"), error
        else:
            raise AssertionError("a restricted instance sent")
        assert len(frames) == sent, "a restricted instance must not reach WhatsApp"
        started = time.monotonic()
        wait_until(lambda: session.connected, 10, "the restriction to lift by itself", interval=0.005)
        lifted = time.monotonic() - started
        assert states[-1] == ("connected", None), states[-1]
        assert lifted >= float(wait) * 0.8, f"lifted after {lifted:.2f}s, before its {wait}s"

    refused_waits(1, "0.3")
    refused_waits(2, "0.6")  # the next one in a row waits twice as long
    refuse["next"] = False
    assert transport.send(text_message(instance_id, "to an old contact")) == "3EB0SENT"
    assert session.restrictions == 0, "a delivered send starts the count again"
    refuse["next"] = True
    try:
        transport.send(text_message(instance_id, "to a new contact"))
    except InstanceDisconnected:
        pass
    assert session.state == "restricted" and "(1 in a row" in (session.detail or ""), session.detail
    session.lift_restriction()  # the API's resume: the head is tried now
    assert session.connected and states[-1] == ("connected", None), states[-1]
    try:
        transport.send(text_message(instance_id, "to a new contact, again"))
    except InstanceDisconnected:
        pass
    assert session.state == "restricted" and "(2 in a row" in (session.detail or ""), session.detail
    session.restart()
    wait_until(lambda: session.connected, 10, "the restart to lift the restriction", interval=0.005)
    assert session.restrictions == 0
    transport.close()
    session.stop(timeout=2)
    print("time lock: restricted with its reason, sends held, lifted after a growing wait, or by a resume or a"
          " restart")


if __name__ == "__main__":
    from service.logs import configure_logging

    configure_logging("WARNING")
    globals()[sys.argv[1]]()
