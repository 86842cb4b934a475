"""What clients written for zedaapi (the Go service this design comes from), or generated from
its OpenAPI, post and expect: accepted beside Z-API's shapes, and sent as the simulator records."""

from __future__ import annotations

import base64
from typing import Any

from tests.stack import Stack, wait_until

PHONE = "5511999999999"


def recorded(stack: Stack, instance: dict[str, Any], zaap_id: str) -> dict[str, Any]:
    stack.wait_completed([zaap_id], timeout=30)
    sends = [e for e in stack.sends(instance) if e["zaap_id"] == zaap_id]
    assert len(sends) == 1
    return sends[0]["payload"]  # type: ignore[no-any-return]


def test_zedaapis_button_and_option_lists_are_sent_with_every_button_and_row_in_order(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    buttons = stack.http.post(f"{base}/send-button-list", json={
        "phone": PHONE, "message": "Confirm?", "title": "Order 42", "footer": "Loja Sul",
        "buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}, {"id": "later", "title": "Later"}]})
    assert buttons.status_code == 200, buttons.text
    assert recorded(stack, instance, buttons.json()["zaapId"])["buttonList"] == {
        "buttons": [{"id": "yes", "label": "Yes"}, {"id": "no", "label": "No"}, {"id": "later", "label": "Later"}],
        "title": "Order 42", "footer": "Loja Sul"}

    options = stack.http.post(f"{base}/send-option-list", json={
        "phone": PHONE, "message": "Menu", "title": "Today", "buttonLabel": "Open", "footer": "bon appétit",
        "sections": [{"title": "Pizzas", "rows": [{"id": "p1", "title": "Margherita", "description": "tomato"},
                                                  {"id": "p2", "title": "Calabresa"}]},
                     {"title": "Drinks", "rows": [{"id": "d1", "title": "Water"}]}]})
    assert options.status_code == 200, options.text
    spec = recorded(stack, instance, options.json()["zaapId"])["optionList"]
    assert [(o["id"], o["title"]) for o in spec["options"]] == [("p1", "Margherita"), ("p2", "Calabresa"),
                                                                ("d1", "Water")]
    assert spec["options"][0]["description"] == "tomato"
    assert [s["title"] for s in spec["sections"]] == ["Pizzas", "Drinks"]
    assert (spec["title"], spec["buttonLabel"], spec["footer"]) == ("Today", "Open", "bon appétit")

    refused = stack.http.post(f"{base}/send-option-list", json={
        "phone": PHONE, "message": "Menu", "sections": [{"title": "A", "rows": [{"id": "1"}]}]})
    assert (refused.status_code, refused.json()["field"]) == (400, "sections[0].rows[0].title")
    refused = stack.http.post(f"{base}/send-button-list", json={"phone": PHONE, "message": "?", "buttons": []})
    assert (refused.status_code, refused.json()["field"]) == (400, "buttons")


def test_a_document_without_its_extension_in_the_path_takes_it_from_the_file_name_or_the_url(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    by_name = stack.http.post(f"{base}/send-document", json={"phone": PHONE, "document": pdf,
                                                             "fileName": "Invoice.PDF"})
    assert by_name.status_code == 200, by_name.text
    assert recorded(stack, instance, by_name.json()["zaapId"])["extension"] == "pdf"
    by_url = stack.http.post(f"{base}/send-document",
                             json={"phone": PHONE, "document": "https://files.example.com/r/report.xlsx?sig=1"})
    assert by_url.status_code == 200, by_url.text
    assert recorded(stack, instance, by_url.json()["zaapId"])["extension"] == "xlsx"
    by_type = stack.http.post(f"{base}/send-document", json={"phone": PHONE,
                                                             "document": f"data:application/pdf;base64,{pdf}"})
    assert by_type.status_code == 200 and recorded(stack, instance, by_type.json()["zaapId"])["extension"] == "pdf"
    unknown = stack.http.post(f"{base}/send-document", json={"phone": PHONE, "document": pdf})
    assert (unknown.status_code, unknown.json()["field"]) == (400, "extension")
    assert stack.one("SELECT count(*) AS n FROM messages")["n"] == 3


def test_the_send_answer_always_gives_a_reason_string(stack: Stack) -> None:
    instance = stack.create_instance()
    answer = stack.send_text(instance, "hi")
    assert answer["whatsAppStatus"] == {"connected": True, "reason": "connected"}
    assert stack.http.post(f"{stack.base(instance)}/disconnect").status_code == 200

    def offline() -> dict[str, Any] | None:
        # The API's credentials cache holds the state for a few seconds: until the new one shows.
        status = stack.send_text(instance, "later", delayMessage=600)["whatsAppStatus"]
        return None if status["connected"] else status

    status = wait_until(offline, 30, "the offline state in the answer")
    assert isinstance(status["reason"], str) and status["reason"] and status["reason"] != "connected"
