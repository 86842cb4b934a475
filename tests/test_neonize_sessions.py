"""The session side of the neonize transport at fleet scale (issue 21): the registry lock and the
dial gate here (no Go library), and the checks that load it in subprocesses
(tests/whatsapp_session_checks.py)."""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest

from tests.gate_client import proxy_connect as connect
from tests.stack import run_child_check
from workers.transports.base import InstanceDisconnected
from workers.transports.neonize.gate import Gate, GateRefused, open_upstream, parse_connect
from workers.transports.neonize.registry import RegistryLock


def run_check(name: str, **env: str) -> str:
    return run_child_check("whatsapp_session_checks", name, timeout=240, **env)


def test_a_connect_storm_spends_no_attempt_and_each_backlog_goes_when_its_session_is_up() -> None:
    assert "200 sessions up" in run_check("storm")


def test_only_a_worker_holding_the_lease_reconnects_and_whatsmeow_never_does_by_itself() -> None:
    assert "a stale session ends itself" in run_check("leases")


def test_no_call_is_admitted_before_neonize_has_written_its_maps_on_a_slow_store(database_url: str) -> None:
    assert "no call admitted before them" in run_check("slow_store", DATABASE_URL=database_url)


def test_the_reach_out_time_lock_restricts_the_instance_with_its_reason_and_lifts_by_itself() -> None:
    assert "lifted after a growing wait, or by a resume or a restart" in run_check("time_lock")


def test_a_dial_that_is_never_answered_holds_no_other_connect_up() -> None:
    assert "beside a dial that was never answered" in run_check("quiet_dial")


def test_a_late_stop_of_a_finished_connect_leaves_the_clients_next_connect_up() -> None:
    assert "left the next one up" in run_check("stale_stop")


def test_reads_share_writes_exclude_and_a_read_that_cannot_get_in_waits_without_an_attempt() -> None:
    lock = RegistryLock(lease=0.2, wait=0.3)
    connecting = lock.connecting()
    with pytest.raises(InstanceDisconnected, match="the message waits"):
        lock.read(lambda: "during the writes")
    assert lock.stats["reads_refused"] == 1
    # The dial, unanswered: the client cannot reach its own reads, so a writer may write.
    connecting.dialed()
    assert connecting.phase == "quiet"
    assert lock.read(lambda: "during the dial") == "during the dial"
    assert lock.write(lambda: "beside an unanswered dial") == "beside an unanswered dial"
    # WhatsApp answers: from then on a writer waits for the connect's own reads (first callback).
    connecting.inbound()
    assert connecting.phase == "active"
    stopped: list[float] = []
    stopper = threading.Thread(target=lambda: lock.write(lambda: stopped.append(time.monotonic())))
    stopper.start()
    time.sleep(0.1)
    assert not stopped, "a stop wrote while a connect's own reads could still run"
    assert lock.read(lambda: "a writer waits for the dial anyway") == "a writer waits for the dial anyway"
    alive = time.monotonic()
    connecting.alive()
    stopper.join(5)
    assert stopped and stopped[0] >= alive
    connecting.returned()  # a second end changes nothing
    assert lock.read(lambda: "after") == "after"
    # With no dial in flight a waiting writer goes first (a stream of sends cannot starve it), and
    # a call hung in Go holds it up no longer than the lease.
    fair = RegistryLock(lease=1.0, wait=0.3)
    hung = threading.Event()
    reading = threading.Event()
    threading.Thread(target=lambda: fair.read(lambda: (reading.set(), hung.wait(5))), daemon=True).start()
    assert reading.wait(5)
    writing = threading.Thread(target=lambda: fair.write(lambda: None))
    writing.start()
    wait_until = time.monotonic() + 5
    while not fair._writers_waiting and time.monotonic() < wait_until:
        time.sleep(0.005)
    with pytest.raises(InstanceDisconnected):
        fair.read(lambda: "ahead of the writer")
    writing.join(5)
    assert not writing.is_alive(), "the writer waited past the hung call's lease"
    hung.set()


def test_the_first_bytes_of_a_handshake_wait_for_a_connect_that_is_writing() -> None:
    lock = RegistryLock(lease=0.2, wait=0.3)
    first = lock.connecting()
    first.dialed()
    writing = lock.connecting()  # another connect writes neonize's maps
    answered = threading.Thread(target=first.inbound)
    answered.start()
    time.sleep(0.1)
    assert first.phase == "quiet", "WhatsApp's answer passed the gate during another connect's writes"
    writing.dialed()
    answered.join(5)
    assert first.phase == "active"
    for connecting in (first, writing):
        connecting.returned()
    assert lock.write(lambda: "free") == "free"


def echo_server() -> tuple[str, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        while data := conn.recv(1024):
            conn.sendall(data)
        conn.close()

    def accept() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()


def token_of(url: str) -> tuple[int, str]:
    rest = url.removeprefix("http://")
    token, _, address = rest.partition("@")
    return int(address.rpartition(":")[2]), token


def test_the_gate_tunnels_a_clients_one_dial_refuses_the_next_and_cuts_on_stop() -> None:
    gate = Gate(upstream=echo_server())
    dials: list[str] = []
    redials: list[str] = []
    redialled = threading.Event()
    url = gate.open("i/1", lambda: dials.append("i/1"), lambda: (redials.append("i/1"), redialled.set()))
    port, token = token_of(url)
    sock, answer = connect(port, token)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    sock.sendall(b"frames")
    assert sock.recv(100) == b"frames"
    assert dials == ["i/1"]
    # whatsmeow dialling again by itself: refused, and the session is told.
    again, answer = connect(port, token)
    assert answer.startswith(b"HTTP/1.1 403") and b"reconnects by itself" in answer, answer
    assert redialled.wait(5) and redials == ["i/1"]
    # An unknown client, and a dial its connect refuses.
    assert connect(port, "nobody")[1].startswith(b"HTTP/1.1 403")

    def refuse() -> None:
        raise GateRefused("stopped")

    port2, token2 = token_of(gate.open("i/2", refuse, lambda: None))
    assert connect(port2, token2)[1].startswith(b"HTTP/1.1 403")
    # A stop cuts the tunnel: the client's side sees the end at once.
    gate.close("i/1")
    sock.settimeout(5)
    assert sock.recv(100) == b""
    assert [what for key, what in gate.log if key == "i/1"] == ["dial", "tunnel", "redial", "refused"]


def test_the_gate_dials_through_the_operators_http_or_socks5_proxy() -> None:
    """WHATSAPP_PROXY still carries the websocket: the gate speaks to it upstream."""
    target = echo_server()
    seen: list[bytes] = []

    def proxy_server(socks: bool) -> int:
        server = socket.create_server(("127.0.0.1", 0))

        def serve(conn: socket.socket) -> None:
            if socks:
                assert conn.recv(3) == b"\x05\x01\x00"
                conn.sendall(b"\x05\x00")
                head = conn.recv(4)
                name = conn.recv(conn.recv(1)[0])
                conn.recv(2)
                seen.append(head + name)
                conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
            else:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(1024)
                seen.append(head)
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
            upstream = socket.create_connection(target)
            while data := conn.recv(1024):
                upstream.sendall(data)
                conn.sendall(upstream.recv(1024))

        threading.Thread(target=lambda: [threading.Thread(target=serve, args=(server.accept()[0],),
                                                          daemon=True).start() for _ in range(2)],
                         daemon=True).start()
        return server.getsockname()[1]

    for scheme, socks in (("http://u:p%40ss@", False), ("socks5://", True)):
        conn = open_upstream("web.whatsapp.com", 443, f"{scheme}127.0.0.1:{proxy_server(socks)}", timeout=5)
        conn.sendall(b"ping")
        assert conn.recv(10) == b"ping"
        conn.close()
    assert seen[0].startswith(b"CONNECT web.whatsapp.com:443 HTTP/1.1")
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"u:p@ss") in seen[0]
    assert seen[1] == b"\x05\x01\x00\x03web.whatsapp.com"
    assert parse_connect(b"CONNECT web.whatsapp.com:443 HTTP/1.1\r\n\r\n") == ("web.whatsapp.com", 443, "")
