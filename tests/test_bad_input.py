"""Bad input gets a 4xx JSON error naming the field, and nothing is stored."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.stack import ADMIN_TOKEN, ROOT, Stack


def send(stack: Stack, path: str, *, content: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    response = stack.http.post(path, content=content, headers={"Content-Type": "application/json", **(headers or {})})
    return response.status_code, response.json()


CASES = [
    # (body, expected status, expected field)
    (b'{"message": "hi"}', 400, "phone"),
    (b'{"phone": "", "message": "hi"}', 400, "phone"),
    (b'{"phone": "   ", "message": "hi"}', 400, "phone"),
    (b'{"phone": "not-a-number", "message": "hi"}', 400, "phone"),
    (b'{"phone": ["5511999999999"], "message": "hi"}', 400, "phone"),
    (b'{"phone": "551199999", "message": "hi"}', 400, "phone"),  # 9 digits: too short
    (b'{"phone": "5511999999999999", "message": "hi"}', 400, "phone"),  # 16 digits: too long
    (b'{"phone": "5511999999999"}', 400, "message"),
    (b'{"phone": "5511999999999", "message": ""}', 400, "message"),
    (b'{"phone": "5511999999999", "message": 42}', 400, "message"),
    (b'{"phone": "5511999999999", "message": "hi", "delayMessage": "soon"}', 400, "delayMessage"),
    (b'{"phone": "5511999999999", "message": "hi", "delayMessage": -1}', 400, "delayMessage"),
    (b'{"phone": "5511999999999", "message": "hi", "delayMessage": true}', 400, "delayMessage"),
    (b'{"phone": "5511999999999", "message": "hi", "delayTyping": -0.5}', 400, "delayTyping"),
    (b'{"phone": "5511999999999", "message": "hi", "delayTyping": "2"}', 400, "delayTyping"),
    (b'{"phone": "5511999999999", "message": "hi", "scheduledFor": "tomorrow"}', 400, "scheduledFor"),
    (b'{"phone": "5511999999999", "message": "hi", "scheduledFor": "2030-01-01T10:00:00"}', 400, "scheduledFor"),
    (b'{"phone": "5511999999999", "message": "hi", "delayMessage": 1e13}', 400, "delayMessage"),
    (b'{"phone": "5511999999999", "message": "hi", "scheduledFor": "9999-12-31T00:00:00Z"}', 400, "scheduledFor"),
    (b'{"phone": "5511999999999", "message": "a\\u0000b"}', 400, "message"),
    (b'{"phone": "5511999999999", "message": "\\ud800"}', 400, "message"),
    ('{"phone": "\u0665\u0665\u0661\u0661\u0669\u0669\u0669\u0669\u0669\u0669", "message": "hi"}'.encode(),
     400, "phone"),
    (b'{"phone": "5511999999999", "message": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "body"),
    (b'{"phone": "5511999999999", "message": "hi"', 400, "body"),
    (b"not json at all", 400, "body"),
    (b'["5511999999999", "hi"]', 400, "body"),
    (b'"hello"', 400, "body"),
    (b"", 400, "body"),
]


def test_invalid_bodies_are_refused_and_store_nothing(stack: Stack) -> None:
    instance = stack.create_instance()
    before = stack.counts()
    for body, status, field in CASES:
        code, answer = send(stack, f"{stack.base(instance)}/send-text", content=body)
        assert (code, answer.get("field")) == (status, field), (body, answer)
        assert answer["error"], body
    assert stack.counts() == before


def test_wrong_instance_or_credentials_are_refused_and_store_nothing(stack: Stack) -> None:
    instance = stack.create_instance()
    guarded = stack.create_instance(clientToken="secret-client-token")
    body = b'{"phone": "5511999999999", "message": "hi"}'
    before = stack.counts()
    cases = [
        # An unknown instance, a malformed id, a wrong token, another instance's token: alike.
        (f"/instances/{uuid.uuid4()}/token/{instance['token']}/send-text", {}, 401, "token"),
        (f"/instances/not-a-uuid/token/{instance['token']}/send-text", {}, 401, "token"),
        (f"/instances/{instance['id']}/token/wrong-token/send-text", {}, 401, "token"),
        (f"/instances/{guarded['id']}/token/{instance['token']}/send-text", {}, 401, "token"),
        (f"{stack.base(guarded)}/send-text", {}, 401, "Client-Token"),
        (f"{stack.base(guarded)}/send-text", {"Client-Token": "wrong"}, 401, "Client-Token"),
    ]
    answers = []
    for path, headers, status, field in cases:
        code, answer = send(stack, path, content=body, headers=headers)
        assert (code, answer.get("field")) == (status, field), (path, answer)
        answers.append(answer)
    assert answers[0] == answers[1] == answers[2] == answers[3], "no answer tells which instances exist"
    assert stack.counts() == before

    code, _ = send(stack, f"{stack.base(guarded)}/send-text", content=body,
                   headers={"Client-Token": "secret-client-token"})
    assert code == 200


def test_non_ascii_credentials_are_compared_not_crashed_on(stack: Stack) -> None:
    """A token or Client-Token with characters beyond ASCII is a wrong credential (401), or the
    right one (200): never a 500 for every route of the instance."""
    guarded = stack.create_instance(clientToken="sênha-çliente")
    body = b'{"phone": "5511999999999", "message": "hi"}'
    before = stack.counts()
    for path, header, status in (
        (f"/instances/{guarded['id']}/token/tökén/send-text", "sênha-çliente", 401),
        (f"{stack.base(guarded)}/send-text", "sênha-errada", 401),
        (f"{stack.base(guarded)}/queue", "sênha-errada", 401),
    ):
        response = stack.http.request("GET" if path.endswith("queue") else "POST", path, content=body,
                                      headers={"Client-Token": header.encode()})
        assert response.status_code == status, (path, response.text)
    assert stack.counts() == before
    right = stack.http.post(f"{stack.base(guarded)}/send-text", content=body,
                            headers={"Client-Token": "sênha-çliente".encode()})
    assert right.status_code == 200, right.text


def test_an_unknown_transport_is_refused_by_name(stack: Stack) -> None:
    before = stack.counts()
    for transport in ("", "telegram", "NEONIZE"):
        response = stack.http.post("/instances", json={"transport": transport},
                                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert (response.status_code, response.json()["field"]) == (400, "transport"), transport
    assert stack.counts() == before


def test_admin_routes_need_the_admin_token(stack: Stack) -> None:
    before = stack.counts()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        response = stack.http.post("/instances", headers=headers)
        assert response.status_code == 401 and response.json()["field"] == "Authorization"
    assert stack.counts() == before


def test_unknown_message_and_paging_errors(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    assert stack.http.get(f"{base}/queue/{'0' * 32}").status_code == 404
    assert stack.http.delete(f"{base}/queue/{'0' * 32}").status_code == 404
    response = stack.http.get(f"{base}/queue", params={"limit": "0"})
    assert response.status_code == 400 and response.json()["field"] == "limit"
    response = stack.http.get(f"{base}/queue", params={"offset": "9" * 30})
    assert response.status_code == 400 and response.json()["field"] == "offset"
    # Another instance's message is not visible through this instance's token.
    other = stack.create_instance()
    zaap_id = stack.send_text(other, "hidden", delayMessage=3600)["zaapId"]
    assert stack.http.get(f"{base}/queue/{zaap_id}").status_code == 404
    assert stack.http.delete(f"{base}/queue/{zaap_id}").status_code == 404
    assert stack.statuses([zaap_id]) == {zaap_id: "scheduled"}


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"MESSAGE_QUEUE_WORKER_MAX_WORKERS": "2"}, "MESSAGE_QUEUE_WORKER_MAX_WORKERS must be 1"),
        ({"MESSAGE_QUEUE_POLL_INTERVAL": "soon"}, "is not a duration"),
        ({"MESSAGE_QUEUE_MIN_JITTER": "5s", "MESSAGE_QUEUE_MAX_JITTER": "1s"}, "MIN_JITTER"),
        ({"MESSAGE_QUEUE_JOB_TIMEOUT": "2m", "MESSAGE_QUEUE_HEARTBEAT_TTL": "60s"}, "JOB_TIMEOUT"),
    ],
)
def test_invalid_settings_are_refused_at_start(env: dict[str, str], complaint: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://unused/unused", **env},
    )
    assert result.returncode == 2
    assert complaint in result.stderr


def test_core_refuses_an_unknown_instance(stack: Stack) -> None:
    from service.core.errors import InstanceNotFound
    from service.core.models import MessageRequest

    before = stack.counts()
    with stack.core() as core, pytest.raises(InstanceNotFound):
        stack.enqueue(core, uuid.uuid4(), MessageRequest(phone="5511999999999", message_type="text",
                                                         payload={"message": "x"}))
    assert stack.counts() == before


def test_simulator_knobs_are_admin_only_and_bounded(stack: Stack) -> None:
    instance = stack.create_instance()
    path = f"/simulator/instances/{instance['id']}"
    assert stack.http.post(path, json={"connected": False}).status_code == 401
    assert stack.http.get(f"{path}/events").status_code == 401
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for body, field in (({"latencyMs": 10**12}, "latencyMs"), ({"failNext": -1}, "failNext"),
                        ({"failMode": "sometimes"}, "failMode"), ({"connected": "yes"}, "connected")):
        response = stack.http.post(path, json=body, headers=admin)
        assert (response.status_code, response.json()["field"]) == (400, field)


def test_delays_chaining_beyond_a_century_are_refused(stack: Stack) -> None:
    instance = stack.create_instance()
    decade = 10 * 365 * 86400
    for _ in range(10):
        stack.send_text(instance, "far", delayMessage=decade)
    before = stack.counts()
    response = stack.http.post(f"{stack.base(instance)}/send-text",
                               json={"phone": "5511999999999", "message": "too far", "delayMessage": decade})
    assert (response.status_code, response.json()["field"]) == (400, "delayMessage")
    assert stack.counts() == before


def test_a_body_over_the_limit_is_refused_whole_or_streamed(make_stack: Any) -> None:
    stack: Stack = make_stack(workers=0, API_MAX_BODY_BYTES="1000")
    instance = stack.create_instance()
    before = stack.counts()
    big = json.dumps({"phone": "5511999999999", "message": "x" * 2000}).encode()
    declared = stack.http.post(f"{stack.base(instance)}/send-text", content=big,
                               headers={"Content-Type": "application/json"})
    assert (declared.status_code, declared.json()["field"]) == (413, "body"), declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for n in range(0, len(big), 100):
            yield big[n:n + 100]

    streamed = stack.http.post(f"{stack.base(instance)}/send-text", content=chunks(),
                               headers={"Content-Type": "application/json"})
    assert (streamed.status_code, streamed.json()["field"]) == (413, "body"), streamed.text
    assert stack.counts() == before
    small = stack.http.post(f"{stack.base(instance)}/send-text", json={"phone": "5511999999999", "message": "ok"})
    assert small.status_code == 200


def test_phones_are_digits_once_plus_spaces_dashes_and_brackets_are_gone(stack: Stack) -> None:
    instance = stack.create_instance()
    for given, stored in (("+55 (11) 99999-8888", "5511999998888"), ("1 650 253 0000", "16502530000"),
                          ("5511999998888@s.whatsapp.net", "5511999998888@s.whatsapp.net"),
                          ("120363025246125244@g.us", "120363025246125244@g.us")):
        zaap_id = stack.send_text(instance, "hi", phone=given, delayMessage=3600)["zaapId"]
        assert stack.job(zaap_id)["phone"] == stored, given
