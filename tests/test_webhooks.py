"""Webhooks, Z-API's way, against a real local HTTP receiver: signed, in order per instance,
retried until the receiver takes them, never in the way of sending."""

from __future__ import annotations

import time

from tests.stack import ADMIN_TOKEN, Stack, wait_until
from tests.webhook_receiver import Receiver, configure, verify

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_every_event_is_posted_signed_and_in_order(stack: Stack, receiver: Receiver) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    configure(stack, instance, "update-every-webhooks", f"{receiver.url}/all")
    configure(stack, instance, "update-webhook-message-status", f"{receiver.url}/status")
    settings = stack.http.get(f"{base}/webhooks").json()
    assert settings["delivery"] == f"{receiver.url}/all" and settings["messageStatus"] == f"{receiver.url}/status"
    secret = settings["secret"]
    assert len(secret) == 64

    sent = stack.send_text(instance, "delivered")["zaapId"]
    stack.wait_completed([sent], timeout=30)
    stack.simulate(instance, failNext=1, failMode="permanent")
    refused = stack.send_text(instance, "discarded")["zaapId"]
    wait_until(lambda: stack.job(refused)["status"] == "discarded", 30, "the discard")
    cancelled = stack.send_text(instance, "never", delayMessage=3600)["zaapId"]
    assert stack.http.delete(f"{base}/queue/{cancelled}").status_code == 200
    whatsapp_id = stack.job(sent)["whatsapp_message_id"]
    read = stack.http.post(f"/simulator/instances/{instance['id']}/receipts", headers=ADMIN,
                           json={"messageId": whatsapp_id, "status": "READ"})
    assert read.json() == {"value": True, "moved": 1}
    assert stack.http.post(f"{base}/disconnect").status_code == 200
    assert stack.http.post(f"{base}/restart").status_code == 200

    wait_until(lambda: len(receiver.requests) >= 7, 30, "seven deliveries")
    time.sleep(0.5)  # nothing more may come (a cancelled send reports nothing)
    events = [(r["path"], r["body"]["type"], r["body"].get("status") or r["body"].get("zaapId")) for r in
              receiver.requests]
    assert events == [
        ("/all", "DeliveryCallback", sent), ("/status", "MessageStatusCallback", "SENT"),
        ("/all", "DeliveryCallback", refused), ("/status", "MessageStatusCallback", "RECEIVED"),
        ("/status", "MessageStatusCallback", "READ"), ("/all", "DisconnectedCallback", None),
        ("/all", "ConnectedCallback", None),
    ], events
    delivered, discarded = receiver.bodies("/all")[:2]
    assert delivered["messageId"] == whatsapp_id and delivered["phone"] == "5511999999999"
    assert delivered["instanceId"] == instance["id"] and delivered["momment"] > 1_700_000_000_000
    assert "error" not in delivered and "simulated permanent failure" in discarded["error"]
    assert receiver.bodies("/status")[2]["ids"] == [whatsapp_id]
    assert all(verify(secret, r) for r in receiver.requests)
    assert not verify("another secret", receiver.requests[0])
    ids = [int(r["headers"]["X-WMQ-Delivery"]) for r in receiver.requests]
    assert ids == sorted(ids)

    listed = stack.http.get(f"{base}/webhook-deliveries").json()
    assert [d["status"] for d in listed] == ["delivered"] * 7 and all(d["attempts"] == 1 for d in listed)


def test_a_failing_receiver_gets_each_event_in_order_on_a_later_try(stack: Stack, receiver: Receiver) -> None:
    instance = stack.create_instance()
    configure(stack, instance, "update-webhook-delivery", receiver.url)
    receiver.fail = 2
    first, second = (stack.send_text(instance, text)["zaapId"] for text in ("one", "two"))
    stack.wait_completed([first, second], timeout=30)
    wait_until(lambda: len(receiver.requests) >= 4, 30, "two failures, then both events")
    assert [r["body"]["zaapId"] for r in receiver.requests] == [first, first, first, second], \
        "the second event waits for the first"
    tries = [r["at"] for r in receiver.requests]
    assert tries[2] - tries[1] >= tries[1] - tries[0] >= 0.9, "backoff between tries"
    listed = stack.http.get(f"{stack.base(instance)}/webhook-deliveries").json()
    assert [(d["body"]["zaapId"], d["attempts"], d["lastStatus"], d["status"]) for d in listed] == [
        (second, 1, 200, "delivered"), (first, 3, 200, "delivered")]


def test_a_slow_receiver_never_slows_sending(stack: Stack, receiver: Receiver) -> None:
    instance = stack.create_instance()
    configure(stack, instance, "update-webhook-delivery", receiver.url)
    receiver.delay = 2.0
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(6)]
    stack.wait_completed(ids, timeout=30)
    # Every send was done while the receiver was still on its first or second delivery.
    assert len(receiver.requests) <= 2, len(receiver.requests)
    wait_until(lambda: len(receiver.requests) == 6, 60, "every delivery, eventually")
    assert [r["body"]["zaapId"] for r in receiver.requests] == ids


def test_webhook_urls_are_checked(stack: Stack) -> None:
    instance = stack.create_instance()
    for value in ("ftp://example.com/hook", "not a url", 42):
        response = stack.http.put(f"{stack.base(instance)}/update-webhook-delivery", json={"value": value})
        assert (response.status_code, response.json()["field"]) == (400, "value"), value
    configure(stack, instance, "update-webhook-delivery", "https://example.com/hook")
    assert stack.http.put(f"{stack.base(instance)}/update-webhook-delivery", json={"value": ""}).status_code == 200
    assert stack.http.get(f"{stack.base(instance)}/webhooks").json()["delivery"] is None


def test_a_rotated_secret_signs_beside_the_new_one_and_the_signature_names_the_delivery(
        stack: Stack, receiver: Receiver) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    configure(stack, instance, "update-webhook-delivery", receiver.url)
    old = stack.http.get(f"{base}/webhooks").json()["secret"]
    rotated = stack.http.post(f"{base}/rotate-webhook-secret")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and len(new) == 64 and rotated.json()["previousSecretValidUntil"]
    assert stack.http.get(f"{base}/webhooks").json()["secret"] == new
    stack.wait_completed([stack.send_text(instance, "signed twice")["zaapId"]], timeout=30)
    wait_until(lambda: receiver.requests, 30, "the delivery")
    request = receiver.requests[0]
    assert request["headers"]["X-WMQ-Signature"].count("v2=") == 2
    assert verify(new, request) and verify(old, request)
    assert not verify(new, request, delivery=str(int(request["headers"]["X-WMQ-Delivery"]) + 1)), \
        "a captured request passed off under another delivery id must not verify"
    assert stack.http.post(f"/instances/{instance['id']}/token/wrong/rotate-webhook-secret").status_code == 401
