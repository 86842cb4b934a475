"""Idempotent sends: an `Idempotency-Key` makes a retried send (after a lost answer, a timeout,
a 503) return the first answer instead of queueing the message twice."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any
from urllib.parse import urlsplit

from service.core import maintenance
from tests.stack import Stack, wait_until

BODY = {"phone": "5511999999999", "message": "once"}


def messages_of(stack: Stack, instance: dict[str, Any]) -> list[str]:
    rows = stack.all("SELECT zaap_id FROM messages WHERE instance_id = %s ORDER BY sequence", (instance["id"],))
    return [r["zaap_id"] for r in rows]


def post(stack: Stack, instance: dict[str, Any], key: str, body: dict[str, Any] = BODY) -> Any:
    return stack.http.post(f"{stack.base(instance)}/send-text", json=body, headers={"Idempotency-Key": key})


def test_the_same_key_and_body_give_the_first_answer_and_store_nothing_more(stack: Stack) -> None:
    instance = stack.create_instance()
    first = post(stack, instance, "order-1")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = post(stack, instance, "order-1", {**BODY, "delayMessage": 0})  # the same request, written otherwise
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert messages_of(stack, instance) == [first.json()["zaapId"]]
    # Keys belong to their instance: another instance's key of the same name is another send.
    other = stack.create_instance()
    assert post(stack, other, "order-1").json()["zaapId"] != first.json()["zaapId"]

    refused = post(stack, instance, "order-1", {**BODY, "message": "something else"})
    assert (refused.status_code, refused.json()["field"]) == (422, "Idempotency-Key"), refused.text
    for bad in ("", "x" * 256, "chave-ç"):
        response = stack.http.post(f"{stack.base(instance)}/send-text", json=BODY,
                                   headers={"Idempotency-Key": bad.encode()})
        assert (response.status_code, response.json()["field"]) == (400, "Idempotency-Key"), bad
    assert messages_of(stack, instance) == [first.json()["zaapId"]]
    stack.wait_completed([first.json()["zaapId"]], timeout=30)
    assert len(stack.sends(instance)) == 1


def test_a_retry_after_an_answer_lost_on_the_way_back_sends_once(stack: Stack) -> None:
    """The client's connection breaks after the request went out: the send is committed, the
    answer never arrives; the client retries with its key and learns the message it has."""
    instance = stack.create_instance()
    url = urlsplit(str(stack.http.base_url))
    body = json.dumps(BODY).encode()
    request = (f"POST {stack.base(instance)}/send-text HTTP/1.1\r\nHost: {url.hostname}\r\n"
               f"Content-Type: application/json\r\nIdempotency-Key: lost-answer\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    with socket.create_connection((url.hostname, url.port)) as raw:
        raw.sendall(request)
        stored = wait_until(lambda: messages_of(stack, instance), 30, "the send to be committed")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # closed with a reset, the answer unread: the client never learns what became of its send
    retry = post(stack, instance, "lost-answer")
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert [retry.json()["zaapId"]] == stored == messages_of(stack, instance)
    stack.wait_completed(stored, timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == stored, "sent once"


def test_concurrent_requests_with_one_key_queue_one_message(stack: Stack) -> None:
    instance = stack.create_instance()
    answers: list[Any] = []
    start = threading.Barrier(8)

    def send() -> None:
        start.wait()
        answers.append(post(stack, instance, "burst"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert len({a.json()["zaapId"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
    assert messages_of(stack, instance) == [answers[0].json()["zaapId"]]


def test_a_key_older_than_a_day_is_new_again_and_purged(stack: Stack) -> None:
    instance = stack.create_instance()
    first = post(stack, instance, "yesterday").json()["zaapId"]
    stack.all("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' RETURNING key")
    second = post(stack, instance, "yesterday")
    assert second.status_code == 200 and "Idempotent-Replayed" not in second.headers
    assert messages_of(stack, instance) == [first, second.json()["zaapId"]]
    post(stack, instance, "today")
    stack.all("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'yesterday'"
              " RETURNING key")
    with stack.core() as core, core.pool.connection() as conn:
        assert maintenance.purge_idempotency_keys(core, conn) == 1
    assert [r["key"] for r in stack.all("SELECT key FROM idempotency_keys")] == ["today"]
