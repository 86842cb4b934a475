"""A tenant is an attacker until checked: the URLs it gives must not reach our own network, and
a receiver it points us at must not exhaust a worker or delay the other tenants. Real processes
and real local listeners (127.0.0.1 only: what a test may target); the service reaches them only
where the test puts them on OUTBOUND_ALLOW, as an operator would.
"""

from __future__ import annotations

import json
import resource
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.core.message_types import TYPES
from service.outbound import Client, OutboundError, Policy
from tests.listeners import Listener
from tests.stack import Stack, wait_until
from tests.test_message_types import BODIES
from tests.webhook_receiver import Receiver, configure

#: Every literal form of an internal address a URL parser or resolver accepts.
INTERNAL = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]",
            "169.254.169.254", "10.0.0.1", "100.64.0.1", "[fe80::1]", "[64:ff9b::a9fe:a9fe]", "[2002:7f00:1::]",
            "0.0.0.0"]


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def gzip_bomb(decoded_bytes: int) -> bytes:
    """`decoded_bytes` of zeros, gzipped (about 1,000 times smaller), made without holding them."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(decoded_bytes >> 20)) + packer.flush()


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in (f"Content-Length: {len(body)}", *headers))
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def high_water_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# --- at the API: literal addresses and schemes ---------------------------------------------------


def test_urls_naming_internal_addresses_are_refused_at_the_api(make_stack: Any) -> None:
    stack: Stack = make_stack(OUTBOUND_ALLOW="")
    instance = stack.create_instance()
    base = stack.base(instance)
    for host in INTERNAL:
        for scheme in ("https", "http"):
            url = f"{scheme}://{host}:8443/latest/meta-data/iam/security-credentials/role"
            hook = stack.http.put(f"{base}/update-webhook-delivery", json={"value": url})
            assert (hook.status_code, hook.json()["field"]) == (400, "value"), (url, hook.text)
            assert "address not allowed" in hook.json()["error"], hook.text
            media = stack.http.post(f"{base}/send-document/pdf", json={"phone": "5511999999999", "document": url})
            assert (media.status_code, media.json()["field"]) == (400, "document"), (url, media.text)
    plain = stack.http.put(f"{base}/update-webhook-delivery", json={"value": "http://hooks.example.com/x"})
    assert plain.status_code == 400 and "https" in plain.json()["error"], plain.text
    assert stack.http.get(f"{base}/webhooks").json()["delivery"] is None
    assert stack.one("SELECT count(*) AS n FROM messages")["n"] == 0
    # A name is not refused here (it is resolved when the worker connects): see below.
    configure(stack, instance, "update-webhook-delivery", "https://localhost:1/hook")


def test_a_name_resolving_to_an_internal_address_is_refused_when_the_worker_connects(
        make_stack: Any, listeners: list[Listener]) -> None:
    internal = Listener("answer", answer("200 OK", b"internal banner"))
    listeners.append(internal)
    stack: Stack = make_stack(OUTBOUND_ALLOW="", OUTBOUND_PLAIN_HTTP="true")
    instance = stack.create_instance()
    configure(stack, instance, "update-webhook-delivery", f"http://localhost:{internal.port}/hook")
    sent = stack.send_text(instance, "hi")["zaapId"]
    stack.wait_completed([sent], timeout=30)
    delivery = wait_until(lambda: [d for d in stack.http.get(f"{stack.base(instance)}/webhook-deliveries").json()
                                   if d["lastError"]], 30, "the refused attempt")[0]
    assert delivery["lastError"] == "address not allowed: the host is not a public internet address", delivery
    assert delivery["lastStatus"] is None and delivery["status"] == "pending"
    assert internal.connections == 0


def test_redirects_and_names_are_checked_at_every_hop(listeners: list[Listener]) -> None:
    """Media downloads follow redirects: each hop is checked as the first; nothing of the
    internal listener ever comes back."""
    internal = Listener("answer", answer("200 OK", b"SECRET CREDENTIALS"))
    listeners.append(internal)
    targets = [f"http://127.0.0.1:{internal.port}/creds", f"http://localhost:{internal.port}/creds",
               f"http://[::ffff:127.0.0.1]:{internal.port}/creds", f"http://2130706433:{internal.port}/creds"]
    for target in targets:
        public = Listener("answer", answer("302 Found", b"", f"Location: {target}"))
        listeners.append(public)
        # The "public" host is the one the operator allowed (by port); the internal one is not.
        client = Client(Policy.parse(f"127.0.0.1:{public.port}", plain_http=True))
        with pytest.raises(OutboundError, match="^address not allowed") as refused:
            client.get(f"http://127.0.0.1:{public.port}/image.png", timeout=5, max_bytes=1 << 20)
        assert "SECRET" not in str(refused.value) and public.connections == 1
        client.close()
    assert internal.connections == 0
    chain = Listener("answer", answer("302 Found", b"", "Location: /again"))
    listeners.append(chain)
    with pytest.raises(OutboundError, match="too many redirects"):
        Client(Policy.parse(f"127.0.0.1:{chain.port}")).get(f"http://127.0.0.1:{chain.port}/", timeout=5,
                                                            max_bytes=100)
    assert chain.connections <= 4


def test_a_download_is_bounded_in_bytes_decoded_and_in_total_time(listeners: list[Listener]) -> None:
    bomb = gzip_bomb(512 << 20)
    listeners += [Listener("answer", answer("200 OK", bomb, "Content-Encoding: gzip", "Content-Type: image/png")),
                  Listener("trickle"), Listener("never")]
    bombing, trickling, silent = listeners
    client = Client(Policy.parse("127.0.0.1"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(OutboundError, match=r"^answer too large \(over 10485760 bytes\)$"):
        client.get(f"http://127.0.0.1:{bombing.port}/x.png", timeout=20, max_bytes=10 << 20)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"decoding the bomb grew this process by {grown_mib:.0f} MiB"
    for listener in (trickling, silent):
        started = time.monotonic()
        with pytest.raises(OutboundError, match=r"^timed out after 1\.5 s$"):
            client.get(f"http://127.0.0.1:{listener.port}/x.png", timeout=1.5, max_bytes=1 << 20)
        assert time.monotonic() - started < 3, "the deadline is for the whole request, not per read"


# --- webhooks: hostile receivers beside a good one ------------------------------------------------


def test_hostile_receivers_delay_only_their_own_instances(make_stack: Any, receiver: Receiver,
                                                          listeners: list[Listener]) -> None:
    listeners += [Listener("answer", answer("200 OK", gzip_bomb(512 << 20), "Content-Encoding: gzip")),
                  Listener("trickle"), Listener("never"),
                  Listener("answer", answer("500 Internal Server Error", b"SECRET-BANNER db=10.0.0.5:5432"))]
    bombing, trickling, silent, failing = listeners
    stack: Stack = make_stack(WEBHOOK_TIMEOUT="2s", WEBHOOK_RETRY_FOR="1h")
    worker = stack.workers[0]
    memory_before = high_water_rss_kib(worker.pid)
    hostile: dict[str, list[dict[str, Any]]] = {"bomb": [], "trickle": [], "never": [], "500": []}
    for name, listener, count in (("bomb", bombing, 1), ("trickle", trickling, 1), ("never", silent, 6),
                                  ("500", failing, 1)):
        for _ in range(count):
            instance = stack.create_instance()
            configure(stack, instance, "update-webhook-delivery", f"http://127.0.0.1:{listener.port}/hook")
            hostile[name].append(instance)
    good = stack.create_instance()
    configure(stack, good, "update-webhook-delivery", f"{receiver.url}/good")

    sent = [stack.send_text(instance, "hi")["zaapId"] for group in hostile.values() for instance in group]
    wait_until(lambda: silent.open >= 4 and trickling.open >= 1, 30, "posts hanging on the slow receivers")
    # No transaction is open, and no instance row locked, while those posts hang.
    assert stack.one("""SELECT count(*) AS n FROM pg_stat_activity
                         WHERE application_name = 'wmq-webhooks' AND state LIKE 'idle in transaction%'""")["n"] == 0
    posting = stack.all("SELECT instance_id FROM webhook_deliveries WHERE posting_since IS NOT NULL AND url LIKE %s",
                        (f"%:{silent.port}/%",))
    assert posting, "a hanging post is recorded as started"
    for row in posting:
        assert stack.one("SELECT count(*) AS n FROM (SELECT 1 FROM instance_webhooks WHERE instance_id = %s "
                         "FOR UPDATE NOWAIT) locked", (row["instance_id"],))["n"] == 1
    # The good instance's deliveries, while the hostile receivers hold their posts.
    latencies = []
    for n in range(5):
        zaap_id = stack.send_text(good, f"good {n}")["zaapId"]
        stack.wait_completed([zaap_id], timeout=30)
        done = time.monotonic()
        wait_until(lambda n=n: len(receiver.bodies("/good")) > n, 30, f"good delivery {n}")
        latencies.append(time.monotonic() - done)
    print(f"good receiver's delivery latency beside hostile ones: max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 1.5, latencies  # not behind a 2 s timeout of somebody else's receiver
    assert silent.most_open <= 4, "at most WEBHOOK_RECEIVER_CONCURRENCY posts in flight to one receiver"

    def outcome(instance: dict[str, Any]) -> dict[str, Any] | None:
        listed = stack.http.get(f"{stack.base(instance)}/webhook-deliveries").json()
        return listed[0] if listed and (listed[0]["lastError"] or listed[0]["deliveredAt"]) else None

    assert wait_until(lambda: outcome(hostile["bomb"][0]), 30, "the bomb's answer")["status"] == "delivered"
    for name in ("trickle", "never"):
        assert wait_until(lambda name=name: outcome(hostile[name][0]), 30, name)["lastError"] == "timed out after 2 s"
    failed = wait_until(lambda: outcome(hostile["500"][0]), 30, "the 500")
    assert (failed["lastError"], failed["lastStatus"]) == ("HTTP 500", 500)
    everything = json.dumps([stack.http.get(f"{stack.base(i)}/webhook-deliveries").json()
                             for group in hostile.values() for i in group])
    assert "SECRET" not in everything and "10.0.0.5" not in everything

    grown_mib = (high_water_rss_kib(worker.pid) - memory_before) / 1024
    print(f"worker memory high-water mark grew by {grown_mib:.0f} MiB")
    assert grown_mib < 64, f"the worker grew by {grown_mib:.0f} MiB"
    assert worker.poll() is None
    stack.wait_completed(sent, timeout=30)
    for group in hostile.values():
        for instance in group:
            assert len(stack.sends(instance)) == 1
    ids = [r["headers"]["X-WMQ-Delivery"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 5


# --- bad numbers --------------------------------------------------------------------------------


def test_non_finite_numbers_are_refused_in_every_field_of_every_send_route(stack: Stack) -> None:
    assert set(BODIES) == set(TYPES)
    instance = stack.create_instance()
    refused = 0
    for name, (route, fields) in BODIES.items():
        body = {"phone": "5511999999999", **fields, "delayMessage": 1}
        for field, value in body.items():
            for bad in (float("nan"), float("inf"), float("-inf")):
                if isinstance(value, dict):
                    key = next(iter(value))
                    poisoned, where = {**value, key: bad}, f"{field}.{key}"
                elif isinstance(value, list):
                    poisoned, where = [*value, bad], f"{field}[{len(value)}]"
                else:
                    poisoned, where = bad, field
                raw = json.dumps({**body, field: poisoned}).encode()  # Python writes NaN, Infinity
                response = stack.http.post(f"{stack.base(instance)}/{route}", content=raw,
                                           headers={"Content-Type": "application/json"})
                assert response.status_code == 400, (name, where, response.text)
                assert response.json()["field"] == where, (name, where, response.text)
                refused += 1
    assert refused > 100
    assert stack.one("SELECT count(*) AS n FROM messages")["n"] == 0
