"""Every message type over HTTP, with Z-API's routes and field names: queued like text in the
instance's one FIFO lane, recorded by the simulator exactly as posted, refused with the field
named when its content cannot be sent. (What WhatsApp receives for each: tests/whatsapp_checks.py
`message_building`.)"""

from __future__ import annotations

import base64
from typing import Any

from service.core.message_types import TYPES
from tests.stack import Stack

PNG = ("data:image/png;base64,"
       "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

#: One body per type (besides `phone`), with every field it takes.
BODIES: dict[str, tuple[str, dict[str, Any]]] = {
    "text": ("send-text", {"message": "Olá"}),
    "image": ("send-image", {"image": PNG, "caption": "a pixel", "viewOnce": False}),
    "audio": ("send-audio", {"audio": "https://example.com/voice.ogg", "ptt": True}),
    "video": ("send-video", {"video": "https://example.com/clip.mp4", "caption": "clip"}),
    "document": ("send-document/pdf", {"document": base64.b64encode(b"%PDF-1.4").decode(), "fileName": "invoice",
                                       "caption": "your invoice"}),
    "location": ("send-location", {"latitude": -23.55, "longitude": -46.63, "title": "Sé", "address": "São Paulo"}),
    "contact": ("send-contact", {"contactName": "Ana", "contactPhone": "+55 11 98888-7777"}),
    "button-list": ("send-button-list", {"message": "Yes?", "buttonList": {"buttons": [{"id": "1", "label": "Yes"}]}}),
    "option-list": ("send-option-list", {"message": "Menu", "optionList": {
        "title": "Today", "buttonLabel": "Open", "options": [{"id": "a", "title": "Pizza"}]}}),
    "sticker": ("send-sticker", {"sticker": PNG}),
    "poll": ("send-poll", {"message": "Lunch?", "poll": [{"name": "Pizza"}, {"name": "Soup"}], "pollMaxOptions": 1}),
    "reaction": ("send-reaction", {"reaction": "👍", "messageId": "3EB0C767D26A1D8E"}),
    "link": ("send-link", {"message": "Our shop", "linkUrl": "https://example.com", "title": "Shop",
                           "linkDescription": "All we sell", "image": PNG}),
}


def test_every_type_is_a_route_and_goes_in_order_as_posted(stack: Stack) -> None:
    assert set(BODIES) == set(TYPES), "a new message type needs its case here"
    instance = stack.create_instance()
    posted: list[tuple[str, str, dict[str, Any]]] = []
    for name, (route, fields) in BODIES.items():
        typing = {"delayTyping": 0.2} if name in ("audio", "text") else {}
        response = stack.http.post(f"{stack.base(instance)}/{route}",
                                   json={"phone": "5511999999999", **fields, **typing})
        assert response.status_code == 200, (name, response.text)
        answer = response.json()
        assert answer["zaapId"] == answer["id"] and answer["status"] in ("scheduled", "available"), answer
        expected = {**fields, "extension": "pdf"} if name == "document" else fields
        posted.append((answer["zaapId"], name, expected))
    stack.wait_completed([zaap_id for zaap_id, _, _ in posted], timeout=60)

    sends = stack.sends(instance)
    assert [s["zaap_id"] for s in sends] == [zaap_id for zaap_id, _, _ in posted], "one FIFO lane for every type"
    for send, (zaap_id, name, fields) in zip(sends, posted, strict=True):
        assert send["payload"] == fields, name
        assert stack.job(zaap_id)["message_type"] == name
    # The voice note's wait shows "recording…", the text's "typing…".
    shown = [e["presence"] for e in stack.events(instance) if e["kind"] == "presence"]
    assert shown == ["composing", "paused", "recording", "paused"], shown  # text first, then the audio
    by_type = {name: zaap_id for zaap_id, name, _ in posted}
    reply = stack.http.post(f"{stack.base(instance)}/send-text", json={
        "phone": "5511999999999", "message": "a reply", "messageId": sends[0]["whatsapp_message_id"]}).json()
    stack.wait_completed([reply["zaapId"]], timeout=30)
    assert stack.sends(instance)[-1]["payload"] == {"message": "a reply", "messageId": sends[0]["whatsapp_message_id"]}
    in_group = stack.http.post(f"{stack.base(instance)}/send-text", json={
        "phone": "120363025246125486-group", "message": "a reply", "messageId": "3EB0G",
        "participant": "5511977776666", "fromMe": False}).json()
    stack.wait_completed([in_group["zaapId"]], timeout=30)
    assert stack.sends(instance)[-1]["payload"] == {"message": "a reply", "messageId": "3EB0G",
                                                   "participant": "5511977776666", "fromMe": False}
    listed = stack.http.get(f"{stack.base(instance)}/queue/{by_type['audio']}").json()
    assert listed["messageType"] == "audio" and listed["content"] == BODIES["audio"][1]


def test_content_that_cannot_be_sent_is_refused_naming_the_field(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    cases = [
        ("send-image", {"caption": "no image"}, "image"),
        ("send-image", {"image": "ftp://example.com/a.png"}, "image"),
        ("send-image", {"image": "not base64 at all!"}, "image"),
        ("send-audio", {"audio": "data:audio/ogg;base64,@@@"}, "audio"),
        ("send-document/p.df", {"document": PNG}, "extension"),
        ("send-document/" + "x" * 17, {"document": PNG}, "extension"),
        ("send-location", {"latitude": "north", "longitude": 1}, "latitude"),
        ("send-contact", {"contactName": "Ana", "contactPhone": "12"}, "contactPhone"),
        ("send-contact", {"contactName": "Ana", "contactPhone": "+999 1234567"}, "contactPhone"),
        ("send-button-list", {"message": "m", "buttonList": ["yes"]}, "buttonList"),
        ("send-poll", {"message": "?", "poll": []}, "poll"),
        ("send-poll", {"message": "?", "poll": "a,b"}, "poll"),
        ("send-reaction", {"reaction": "👍"}, "messageId"),
        ("send-reaction", {"reaction": "👍", "messageId": "3EB0C", "participant": ""}, "participant"),
        ("send-text", {"message": "m", "messageId": "3EB0C", "fromMe": "yes"}, "fromMe"),
        ("send-link", {"message": "m", "linkUrl": "javascript:alert(1)"}, "linkUrl"),
        ("send-sticker", {"sticker": ""}, "sticker"),
    ]
    before = stack.counts()
    for route, fields, field in cases:
        response = stack.http.post(f"{base}/{route}", json={"phone": "5511999999999", **fields})
        assert (response.status_code, response.json().get("field")) == (400, field), (route, fields, response.text)
    assert stack.counts() == before
