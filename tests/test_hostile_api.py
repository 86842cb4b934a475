"""Safe with hostile tenants (issue 20): bounded work per request, throttled guessing of
credentials, no database details to anyone, listings without inline media, and a cap on the
bytes an instance may keep waiting. Real processes (tests/stack.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service.api.auth import FAILURE_LIMIT, FAILURE_WINDOW
from service.api.dashboard.pages import MAX_FORM_BYTES
from tests.stack import ADMIN_TOKEN, Stack, wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
MiB = 1024 * 1024


class Probe:
    """`/healthz` timed from a thread of its own, over its own connection, until stopped."""

    def __init__(self, stack: Stack) -> None:
        self.client = httpx.Client(base_url=str(stack.http.base_url), timeout=10)
        self.times: list[float] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            assert self.client.get("/healthz").status_code == 200
            self.times.append(time.monotonic() - started)
            self.stopped.wait(0.005)

    def probes(self) -> int:
        return len(self.times)

    def __enter__(self) -> Probe:
        self.thread.start()
        wait_until(lambda: self.probes() >= 3, 10, "the first probes")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.client.close()


def body_pausing_for(probe: Probe, body: bytes, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """`body` in chunks; halfway, it waits until the probe has answered twice more, so that
    probes are measured while the request is being sent."""
    for start in range(0, len(body), chunk):
        if start == len(body) // 2 // chunk * chunk:
            wanted = probe.probes() + 2
            wait_until(lambda wanted=wanted: probe.probes() >= wanted, 10, "probes during the request")
        yield body[start:start + chunk]


def status_before_the_body_is_sent(stack: Stack, head: bytes, first: bytes) -> bytes:
    """Send a request's head and the first bytes of its body only, and read the answer's status
    line: a server that waits for the whole body never answers (the socket times out)."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(head + first)
        return sock.recv(64).split(b"\r\n")[0]


def test_a_huge_dashboard_form_gets_413_at_once_while_the_api_keeps_answering(stack: Stack) -> None:
    shop = stack.create_instance()
    # 20 MiB of tiny fields (the API's own body limit lets it through): parsed whole, they would
    # hold the event loop for seconds.
    body = b"a=b&" * (5 * MiB)
    assert len(body) == 20 * MiB
    declared = (f"POST /dashboard/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
    assert status_before_the_body_is_sent(stack, declared, body[:64 * 1024]) [:12] == b"HTTP/1.1 413"
    chunked = (b"POST /dashboard/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in [body[:4096]] * 8)  # 32 KiB, no length
    assert status_before_the_body_is_sent(stack, chunked, chunks) [:12] == b"HTTP/1.1 413"

    with Probe(stack) as probe:
        answers = [
            stack.http.post("/dashboard/login", content=body_pausing_for(probe, body),
                            headers={**FORM, "Content-Length": str(len(body))}),
            stack.http.post("/dashboard/login", content=body_pausing_for(probe, body), headers=FORM),  # chunked
            stack.http.post(f"/dashboard/instances/{shop['id']}/pause", content=body_pausing_for(probe, body),
                            headers={**FORM, **ADMIN}),
        ]
    for answer in answers:
        assert (answer.status_code, answer.json()["field"]) == (413, "body"), answer.text
        assert str(MAX_FORM_BYTES) in answer.json()["error"]
    slowest = max(probe.times)
    print(f"/healthz: {probe.probes()} probes, slowest {slowest * 1000:.1f} ms")
    assert slowest < 0.1, f"a /healthz probe took {slowest * 1000:.0f} ms"
    # A form of ordinary size still logs in.
    assert stack.http.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 303


def test_a_large_send_body_is_parsed_off_the_event_loop(stack: Stack) -> None:
    instance = stack.create_instance()
    # 1.5 MiB of JSON in half a million items, each looked at by the parser's checks (no NUL, no lone
    # surrogate): ~0.15 s of Python that would hold the event loop (parsing the JSON itself, one C
    # call, takes ~20 ms); the field itself is ignored.
    body = json.dumps({"phone": "5511999999999", "message": "hi", "padding": [0] * 500_000}).encode()
    assert len(body) > 1.4 * MiB
    with Probe(stack) as probe:
        answer = stack.http.post(f"{stack.base(instance)}/send-text", content=body_pausing_for(probe, body),
                                 headers={"Content-Type": "application/json", "Content-Length": str(len(body))})
        wanted = probe.probes() + 3
        wait_until(lambda: probe.probes() >= wanted, 10, "probes after the send")
    assert answer.status_code == 200, answer.text
    slowest = max(probe.times)
    print(f"/healthz during a 1.5 MiB send of 500,000 items: {probe.probes()} probes, "
          f"slowest {slowest * 1000:.1f} ms")
    assert slowest < 0.1, f"a /healthz probe took {slowest * 1000:.0f} ms"
    assert stack.one("SELECT payload FROM messages")["payload"] == {"message": "hi"}


# -- throttled credentials ------------------------------------------------------------------------


def address(n: int) -> dict[str, str]:
    """Another client address: the test connects from 127.0.0.1, whose X-Forwarded-For uvicorn
    trusts by default (FORWARDED_ALLOW_IPS), as it would a proxy's."""
    return {"X-Forwarded-For": f"203.0.113.{n}"}


def assert_locked_out(answer: httpx.Response) -> None:
    assert answer.status_code == 429, answer.text
    assert 1 <= int(answer.headers["Retry-After"]) <= FAILURE_WINDOW


def test_wrong_admin_tokens_lock_the_address_out_even_for_the_right_one(stack: Stack) -> None:
    wrong = {"Authorization": "Bearer not-the-token"}
    for _ in range(FAILURE_LIMIT):
        assert stack.http.get("/instances", headers=wrong).status_code == 401
    assert_locked_out(stack.http.get("/instances", headers=wrong))
    assert_locked_out(stack.http.get("/instances", headers=ADMIN))
    assert_locked_out(stack.http.get("/dashboard", headers=ADMIN))
    # Another address is not concerned.
    assert stack.http.get("/instances", headers={**ADMIN, **address(1)}).status_code == 200

    # A success resets no count, not even its own address's.
    for _ in range(FAILURE_LIMIT - 1):
        assert stack.http.get("/instances", headers={**wrong, **address(2)}).status_code == 401
    assert stack.http.get("/instances", headers={**ADMIN, **address(2)}).status_code == 200
    assert stack.http.get("/instances", headers={**wrong, **address(2)}).status_code == 401
    assert_locked_out(stack.http.get("/instances", headers={**ADMIN, **address(2)}))
    assert stack.http.get("/instances", headers={**ADMIN, **address(3)}).status_code == 200


def test_wrong_dashboard_logins_lock_the_address_out(stack: Stack) -> None:
    me = address(10)
    for _ in range(FAILURE_LIMIT):
        assert stack.http.post("/dashboard/login", data={"token": "guess"}, headers=me).status_code == 401
    refused = stack.http.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers=me)
    assert_locked_out(refused)
    assert "Too many failed logins" in refused.text and "wmq_dashboard" not in refused.headers.get("set-cookie", "")
    assert_locked_out(stack.http.get("/instances", headers={**ADMIN, **me}))  # one record for every credential
    assert stack.http.post("/dashboard/login", data={"token": ADMIN_TOKEN}, headers=address(11)).status_code == 303

    # A wrong bearer token on the dashboard is a failed login too.
    script, them = httpx.Client(base_url=str(stack.http.base_url)), address(12)  # no session cookie
    for _ in range(FAILURE_LIMIT):
        assert script.get("/dashboard", headers={"Authorization": "Bearer guess", **them}).status_code == 401
    assert_locked_out(script.get("/dashboard", headers={**ADMIN, **them}))
    script.close()


def test_wrong_instance_tokens_lock_the_address_out(stack: Stack) -> None:
    instance = stack.create_instance()
    me = address(20)
    text = {"phone": "5511999999999", "message": "hi"}
    for _ in range(FAILURE_LIMIT):
        answer = stack.http.post(f"/instances/{instance['id']}/token/guess/send-text", json=text, headers=me)
        assert answer.status_code == 401
    assert_locked_out(stack.http.post(f"{stack.base(instance)}/send-text", json=text, headers=me))
    assert_locked_out(stack.http.get(f"{stack.base(instance)}/queue", headers=me))
    assert_locked_out(stack.http.get("/instances", headers={**ADMIN, **me}))
    assert stack.http.post(f"{stack.base(instance)}/send-text", json=text, headers=address(21)).status_code == 200
    assert stack.one("SELECT count(*) AS n FROM messages")["n"] == 1


# -- /readyz tells nobody where the database is ---------------------------------------------------


class Forwarder:
    """127.0.0.1:<port> forwarded to the test's PostgreSQL, which `close` takes away (the
    listener and every connection), as a database outage would."""

    def __init__(self, database_url: str) -> None:
        params = conninfo_to_dict(database_url)
        host, port = str(params.get("host") or "localhost"), int(params.get("port") or 5432)
        self.target: Any = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = make_conninfo(database_url, host="127.0.0.1", port=str(self.port))
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                family = socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET
                upstream = socket.socket(family, socket.SOCK_STREAM)
                upstream.connect(self.target)
                self.sockets += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for end in self.sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def test_readyz_says_the_database_is_unreachable_without_saying_where(database_url: str, tmp_path: Path) -> None:
    forwarder = Forwarder(database_url)
    stack = Stack(forwarder.url, tmp_path / "stack", {})
    try:
        stack.start(workers=0)
        assert stack.http.get("/readyz").json() == {"status": "ready"}
        forwarder.close()
        answer = stack.http.get("/readyz")
        assert answer.status_code == 503
        assert answer.json() == {"status": "unavailable", "error": "database unreachable"}
        for detail in ("127.0.0.1", str(forwarder.port), "5432", "psycopg", "connection", "sec", "/"):
            assert detail not in answer.text, detail
        # The details are the operator's, in the log.
        logged = [json.loads(line) for line in stack.logs().splitlines() if "not ready" in line]
        assert logged and logged[0]["msg"] == "not ready: the database is unreachable"
        assert logged[0]["level"] == "warning" and logged[0]["error"]
        print(f"logged: {logged[0]['error']}")
    finally:
        forwarder.close()
        stack.stop()


# -- listings show inline media as a reference ---------------------------------------------------


def test_listings_and_the_dashboard_show_inline_media_as_a_reference(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    assert stack.http.post(f"{base}/pause").status_code == 200  # kept, not sent
    data = base64.b64encode(os.urandom(3_750_000)).decode()  # 5,000,000 characters
    sent = stack.http.post(f"{base}/send-image", json={"phone": "5511999999999", "caption": "a cat",
                                                       "image": f"data:image/png;base64,{data}"})
    assert sent.status_code == 200, sent.text
    zaap_id = sent.json()["zaapId"]
    stack.send_text(instance, "and a text")
    reference = "inline image/png, 3750000 bytes"

    answers = {
        "GET queue": stack.http.get(f"{base}/queue"),
        "GET queue?status=all": stack.http.get(f"{base}/queue", params={"status": "all", "pageSize": 500}),
        "POST queue": stack.http.post(f"{base}/queue", json={"pageSize": 500}),
        "GET queue/{zaapId}": stack.http.get(f"{base}/queue/{zaap_id}"),
        "dashboard message": stack.http.get(f"/dashboard/messages/{zaap_id}", headers=ADMIN),
    }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text[:300])
        assert len(answer.content) < 64 * 1024, (name, len(answer.content))
        assert reference in answer.text, name
        assert data[1000:1100] not in answer.text, name
    print("answer sizes with a 5 MB image queued:", {name: len(a.content) for name, a in answers.items()})
    listed = answers["GET queue"].json()["messages"][0]
    assert listed["content"] == {"image": reference, "caption": "a cat"} and listed["Message"] == "a cat"
    page = stack.http.get(f"/dashboard/instances/{instance['id']}", headers=ADMIN)
    assert page.status_code == 200 and zaap_id in page.text and len(page.content) < 64 * 1024
    # What is sent is what was stored, whole.
    assert stack.one("SELECT payload->>'image' AS image FROM messages WHERE zaap_id = %s",
                     (zaap_id,))["image"] == f"data:image/png;base64,{data}"


# -- the bytes an instance may keep waiting -------------------------------------------------------


def test_an_instance_keeps_at_most_its_pending_bytes_of_large_payloads(make_stack: Any) -> None:
    limit = 3 * MiB
    stack: Stack = make_stack(MESSAGE_QUEUE_MAX_PENDING_BYTES=str(limit))
    instance = stack.create_instance()
    base = stack.base(instance)
    assert stack.http.post(f"{base}/pause").status_code == 200

    images = [base64.b64encode(os.urandom(1_050_000)).decode() for _ in range(3)]  # 1.4 MB each, incompressible

    def image(n: int) -> dict[str, str]:
        return {"phone": "5511999999999", "image": images[n - 1]}

    assert stack.http.post(f"{base}/send-image", json=image(1)).status_code == 200
    keyed = {"Idempotency-Key": "second-image"}
    assert stack.http.post(f"{base}/send-image", json=image(2), headers=keyed).status_code == 200
    before = stack.counts()
    refused = stack.http.post(f"{base}/send-image", json=image(3))
    assert refused.status_code == 413 and refused.json()["field"] == "body", refused.text
    assert "MESSAGE_QUEUE_MAX_PENDING_BYTES" in refused.json()["error"] and str(limit) in refused.json()["error"]
    assert stack.counts() == before, "nothing stored"
    assert stack.http.get(f"{base}/queue/count").json() == {"count": 2}
    # A replay of a send already stored stores nothing: it is answered, not refused.
    replayed = stack.http.post(f"{base}/send-image", json=image(2), headers=keyed)
    assert replayed.status_code == 200 and replayed.headers["Idempotent-Replayed"] == "true"
    # Small messages take their usual path.
    stack.send_text(instance, "small")

    assert stack.http.delete(f"{base}/queue").json() == {"cancelled": 3}
    assert stack.http.post(f"{base}/send-image", json=image(3)).status_code == 200
