"""A worker that stood still past its lease never takes the WhatsApp session back (issue 21,
item 7), with real worker processes: the session's holder is SIGSTOPped past the TTL, another
worker takes the lease over and connects, and when the first one is resumed its session ends
without dialing WhatsApp again (only the session's own loop dials, and only under the lease's
current fence; whatsmeow's own reconnects are refused at the worker's dial gate).

No WhatsApp here: each worker reaches "WhatsApp" through `WHATSAPP_PROXY`, a local proxy that
answers CONNECT and then holds the line, and that names the worker (the proxy user) on each dial.
Two things keep the resumed worker off the session: its manager stops the sessions it no longer
owns, and the session checks the lease's fence before each connect; this test fails when neither
holds (the session then never ends). A whatsmeow reconnect after a *connected* session drops,
which the gate refuses, needs WhatsApp's servers: tests/whatsapp_session_checks.py `leases` drives
that, and the fence check alone, with fake clients.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.stack import ROOT, Stack, wait_until
from tests.test_chaos import worker_id_of
from tests.whatsmeow_rows import insert_device


class NamingProxy(threading.Thread):
    """Answers every CONNECT with 200 and holds the connection; keeps (worker, time) per dial."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.dials: list[tuple[str, float]] = []
        self.held: list[socket.socket] = []

    def url(self, worker: str) -> str:
        return f"http://{worker}:x@127.0.0.1:{self.port}"

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(1024)
            if not chunk:
                conn.close()
                return
            head += chunk
        user = ""
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("proxy-authorization: basic "):
                user = base64.b64decode(line.split(" ", 2)[2]).decode().partition(":")[0]
        self.dials.append((user, time.monotonic()))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.held.append(conn)

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()

    def count(self, worker: str, since: float = 0.0) -> int:
        return sum(1 for who, at in self.dials if who == worker and at >= since)


@pytest.fixture
def proxy() -> Iterator[NamingProxy]:
    served = NamingProxy()
    served.start()
    yield served
    served.close()


def session_lines(stack: Stack, process: Any, skip: int) -> list[dict[str, Any]]:
    """The worker's "whatsapp session state" log lines after its first `skip` lines."""
    lines = stack.log_files[process.pid].read_text().splitlines()[skip:]
    found = []
    for line in lines:
        if '"whatsapp session state"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def test_a_worker_resumed_after_losing_its_lease_never_dials_the_session_again(make_stack: Any,
                                                                               proxy: NamingProxy,
                                                                               database_url: str) -> None:
    stack: Stack = make_stack(workers=0, WHATSAPP_PROXY=proxy.url("first"))
    # whatsmeow's tables, as a worker makes them (in a child process: the Go library stays out of
    # pytest's), and a linked device for the instance.
    subprocess.run([sys.executable, "-c", "import sys; from workers.transports.neonize.store import init_store;"
                    " init_store(sys.argv[1], 'whatsmeow')", database_url], cwd=ROOT, check=True, timeout=60)
    instance = stack.create_instance(transport="neonize")
    jid = "5511988887777:1@s.whatsapp.net"
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert_device(conn, jid)
        conn.execute("UPDATE instances SET whatsapp_jid = %s WHERE id = %s", (jid, instance["id"]))

    first = stack.start_worker()
    first_id = worker_id_of(stack, first)
    wait_until(lambda: proxy.count("first"), 60, "the first worker's session to dial")
    stack.env["WHATSAPP_PROXY"] = proxy.url("second")
    second = stack.start_worker()
    second_id = worker_id_of(stack, second)

    def owner() -> str | None:
        row = stack.one("SELECT worker_id FROM session_leases WHERE instance_id = %s", (instance["id"],))
        return str(row["worker_id"]) if row["worker_id"] else None

    assert owner() == first_id, "the first worker keeps its one session (a share of one, plus one)"
    first.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: owner() == second_id, 60, "the second worker to take the lease over")
        wait_until(lambda: proxy.count("second"), 60, "the new owner's session to dial")
    finally:
        lines_before = len(stack.log_files[first.pid].read_text().splitlines())
        resumed = time.monotonic()
        first.send_signal(signal.SIGCONT)

    def ended() -> bool:
        """The resumed worker's session is over: it said so, in its own words."""
        return any(line.get("detail") in ("session stopped", "this worker no longer holds the session's lease: "
                                          "another worker holds the session")
                   for line in session_lines(stack, first, lines_before))

    wait_until(ended, 60, "the resumed worker's session to end")
    assert proxy.count("first", since=resumed) == 0, "the resumed worker dialed the session again"
    assert owner() == second_id
    two_owners = stack.all("""
        SELECT a.instance_id FROM session_lease_history a JOIN session_lease_history b
          ON a.instance_id = b.instance_id AND a.id < b.id
         WHERE b.acquired_at < COALESCE(a.released_at, 'infinity')""")
    assert not two_owners
