"""Issue 20's pieces that need no process: what a listing shows of a stored payload (the SQL
function every message read selects), the failed-credentials record, and the chunked JSON the
enqueue of a large payload sends."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from psycopg.types.json import Jsonb

from service.api.auth import Failures, client_address
from service.core.context import Core
from service.core.enqueue import _serialised, larger_than, request_hash
from service.core.models import MessageRequest


def shown(core: Core, payload: Any) -> Any:
    """The payload as the listings show it, once stored in a table (so TOAST applies)."""
    with core.pool.connection() as conn:
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS stored (payload jsonb)")
        conn.execute("TRUNCATE stored")
        conn.execute("INSERT INTO stored VALUES (%s)", (Jsonb(payload),))
        row = conn.execute("SELECT wmq_payload_shown(payload) FROM stored").fetchone()
    assert row is not None
    return row[0]


def test_inline_media_is_shown_as_a_reference_and_short_values_as_they_are(core: Core) -> None:
    data = base64.b64encode(os.urandom(30_000)).decode()
    assert shown(core, {"image": f"data:image/png;base64,{data}", "caption": "olá"}) == {
        "image": "inline image/png, 30000 bytes", "caption": "olá"}
    assert shown(core, {"document": data, "fileName": "a.pdf"}) == {
        "document": "inline base64, 30000 bytes", "fileName": "a.pdf"}
    in_lines = "\n".join(data[n:n + 76] for n in range(0, len(data), 76))
    assert shown(core, {"audio": in_lines})["audio"].startswith("inline base64, ")
    # Short values, http(s) URLs as the API takes them (up to 2,048 characters), numbers,
    # booleans and small objects stay as they are.
    kept = {"image": "https://example.com/" + "a" * 1500, "caption": "x" * 1024, "viewOnce": True,
            "latitude": -23.5, "buttonList": {"buttons": [{"id": "1", "label": "Yes"}]}}
    assert shown(core, kept) == kept
    assert shown(core, {"message": "é" * 1000}) == {"message": "é" * 1000}, "1,000 characters, 2,000 bytes"


def test_long_text_is_cut_and_large_objects_are_summarised_even_when_compressed(core: Core) -> None:
    text = "Olá, tudo bem? " * 4000  # 60,000 characters that compress to ~1 KiB: still cut
    cut = shown(core, {"message": text})["message"]
    assert cut == text[:1000] + "... (60000 characters)"
    options = {"options": [{"id": str(n), "title": "t" * 100} for n in range(200)]}
    assert shown(core, {"message": "m", "optionList": options}) == {
        "message": "m", "optionList": f"inline object, {len(json.dumps(options))} bytes"}
    assert shown(core, {"poll": [{"name": "x" * 100}] * 100})["poll"].startswith("inline array, ")


def test_failures_lock_an_address_out_for_the_window_and_forget_the_oldest_addresses() -> None:
    now = [1000.0]
    failures = Failures(limit=3, window=60, capacity=2, clock=lambda: now[0])
    for _ in range(2):
        failures.failed("10.0.0.1")
        now[0] += 5
    assert failures.retry_after("10.0.0.1") is None
    failures.failed("10.0.0.1")  # the third within the window, at 1010
    assert failures.retry_after("10.0.0.1") == 50, "until its oldest failure is a window old"
    assert failures.retry_after("10.0.0.2") is None, "another address is not concerned"
    now[0] = 1060.5
    assert failures.retry_after("10.0.0.1") is None, "the window passed for one failure: one more try"
    failures.failed("10.0.0.1")
    assert failures.retry_after("10.0.0.1") == 5, "then locked until the next oldest is a window old"
    failures.failed("10.0.0.2")
    failures.failed("10.0.0.3")  # over the capacity: the least recently failed address goes
    assert list(failures.recent) == ["10.0.0.2", "10.0.0.3"]
    assert failures.retry_after("10.0.0.1") is None


def test_failures_count_by_client_address_an_ipv6_client_by_its_64() -> None:
    def of(host: str) -> str:
        return client_address(SimpleNamespace(client=SimpleNamespace(host=host)))  # type: ignore[arg-type]

    assert of("203.0.113.7") == "203.0.113.7" and of("::ffff:203.0.113.7") == "203.0.113.7"
    assert of("2001:db8:1:2:aaaa::1") == of("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert of("2001:db8:1:3::1") != of("2001:db8:1:2::1")
    assert of("testclient") == "testclient"


def test_a_large_payload_is_serialised_in_pieces_to_the_same_json_and_hash() -> None:
    big = "data:image/png;base64," + base64.b64encode(os.urandom(2_000_000)).decode() + '\n"\\ é 😀'
    payload = {"image": big, "caption": "olá 😀", "viewOnce": True, "nested": {"b": [1, 2.5, None, big], "a": "z"}}
    request = MessageRequest(phone="5511999999999", message_type="image", payload=payload, delay_message_ms=1,
                             delay_typing_ms=2, scheduled_for=datetime.now(UTC))
    encoded, digest = _serialised(request, keyed=True)
    assert encoded == json.dumps(payload).encode() and digest == request_hash(request)
    assert larger_than(payload, 64 * 1024) and not larger_than({"message": "x" * 60_000}, 64 * 1024)
    assert larger_than({"poll": [{"name": "x"}] * 20_000}, 64 * 1024)
