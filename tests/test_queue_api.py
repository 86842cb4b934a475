"""The queue as users see it over HTTP: listing, one message with its history, stats, cancel,
pause and resume, health, and the seed's SQL views."""

from __future__ import annotations

from datetime import datetime

from tests.stack import ADMIN_TOKEN, Stack, wait_until


def test_queue_listing_and_message_detail(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    first = stack.send_text(instance, "now")
    later = [stack.send_text(instance, f"later {n}", delayMessage=3600) for n in range(3)]
    stack.wait_completed([first["zaapId"]], timeout=30)

    page = stack.http.get(f"{base}/queue", params={"limit": 2, "offset": 1, "status": "all"}).json()
    assert page["total"] == 4
    assert [m["zaapId"] for m in page["messages"]] == [later[0]["zaapId"], later[1]["zaapId"]]
    pending = stack.http.get(f"{base}/queue").json()  # the queue: what is still to send
    assert [m["zaapId"] for m in pending["messages"]] == [m["zaapId"] for m in later]
    assert pending["total"] == pending["size"] == 3
    assert stack.http.get(f"{base}/queue", params={"status": "pending"}).json()["messages"] == pending["messages"]
    refused = stack.http.get(f"{base}/queue", params={"status": "sent"})
    assert refused.status_code == 400 and refused.json()["field"] == "status"

    done = stack.http.get(f"{base}/queue/{first['zaapId']}").json()
    assert done["status"] == "completed" and done["position"] is None
    assert done["whatsappMessageId"].startswith("SIM") and done["messageId"] == done["whatsappMessageId"]
    assert [e["to"] for e in done["events"]] == ["scheduled", "sending", "completed"]

    third = stack.http.get(f"{base}/queue/{later[2]['zaapId']}").json()
    assert (third["status"], third["position"], third["sequence"]) == ("scheduled", 3, 4)

    stats = stack.http.get(f"{base}/queue/stats").json()
    assert (stats["completed"], stats["scheduled"], stats["total"]) == (1, 3, 4)


def test_cancelled_head_lets_the_next_one_go(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    head = stack.send_text(instance, "cancel me", delayMessage=3600)
    tail = stack.send_text(instance, "me next")
    response = stack.http.delete(f"{base}/queue/{head['zaapId']}")
    assert response.status_code == 200 and response.json()["previousStatus"] == "scheduled"
    stack.wait_completed([tail["zaapId"]], timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [tail["zaapId"]]
    # The withdrawn dispatch is gone from the broker; cancelling again is refused.
    assert stack.one("SELECT count(*) AS n FROM dramatiq.queue")["n"] == 0
    again = stack.http.delete(f"{base}/queue/{head['zaapId']}")
    assert again.status_code == 409 and again.json()["field"] == "zaapId"


def test_cancel_all_touches_one_instance_only(stack: Stack) -> None:
    one, other = stack.create_instance(), stack.create_instance()
    ids = [stack.send_text(one, "x", delayMessage=3600)["zaapId"] for _ in range(3)]
    kept = stack.send_text(other, "y", delayMessage=3600)["zaapId"]
    assert stack.http.delete(f"{stack.base(one)}/queue").json() == {"cancelled": 3}
    assert set(stack.statuses(ids).values()) == {"cancelled"}
    assert stack.statuses([kept]) == {kept: "scheduled"}


def test_paused_instance_keeps_its_messages_until_resumed(stack: Stack) -> None:
    paused, running = stack.create_instance(), stack.create_instance()
    assert stack.http.post(f"{stack.base(paused)}/pause").json() == {"paused": True}
    held = [stack.send_text(paused, f"held {n}")["zaapId"] for n in range(3)]
    flowing = stack.send_text(running, "flows")["zaapId"]
    stack.wait_completed([flowing], timeout=30)
    assert set(stack.statuses(held).values()) == {"scheduled"}
    assert stack.sends(paused) == []
    assert stack.http.post(f"{stack.base(paused)}/resume").json() == {"paused": False}
    stack.wait_completed(held, timeout=30)
    assert [s["zaap_id"] for s in stack.sends(paused)] == held


def test_health_and_unknown_routes(stack: Stack) -> None:
    assert stack.http.get("/healthz").json() == {"status": "ok"}
    assert stack.http.get("/readyz").json() == {"status": "ready"}
    missing = stack.http.get("/nope")
    assert missing.status_code == 404 and missing.json()["field"] == "path"
    wrong = stack.http.put("/instances")
    assert wrong.status_code == 405 and wrong.json()["field"] == "method"


def test_seed_views_report_the_queues(stack: Stack) -> None:
    instance = stack.create_instance()
    done = stack.send_text(instance, "done")["zaapId"]
    stack.wait_completed([done], timeout=30)
    waiting = stack.send_text(instance, "waits", delayMessage=3600)["zaapId"]
    stats = stack.one("SELECT * FROM v_queue_stats_by_instance WHERE instance_id = %s", (instance["id"],))
    assert (stats["completed"], stats["scheduled"], stats["last_sequence"]) == (1, 1, 2)
    active = stack.one("SELECT * FROM v_active_queues WHERE instance_id = %s", (instance["id"],))
    assert (active["pending"], active["head_zaap_id"]) == (1, waiting)
    summary = stack.one("SELECT * FROM v_message_sequences_summary WHERE instance_id = %s", (instance["id"],))
    assert (summary["pending"], summary["last_completed_sequence"]) == (1, 1)
    assert stack.all("SELECT * FROM v_recent_failed_jobs") == []


def test_removed_instance_takes_its_queue_with_it(stack: Stack) -> None:
    instance, other = stack.create_instance(), stack.create_instance()
    stack.send_text(instance, "never sent", delayMessage=3600)
    kept = stack.send_text(other, "kept", delayMessage=3600)["zaapId"]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    refused = stack.http.delete(f"/instances/{instance['id']}", headers=admin)
    assert (refused.status_code, refused.json()["field"]) == (409, "force") and "1 message" in refused.json()["error"]
    assert stack.statuses([kept]) == {kept: "scheduled"} and len(stack.all("SELECT 1 FROM dramatiq.queue")) == 2
    maybe = stack.http.delete(f"/instances/{instance['id']}", params={"force": "maybe"}, headers=admin)
    assert (maybe.status_code, maybe.json()["field"]) == (400, "force")
    removed = stack.http.delete(f"/instances/{instance['id']}", params={"force": "true"}, headers=admin)
    assert removed.json() == {"removed": True, "cancelled": 1}
    assert stack.http.delete(f"/instances/{instance['id']}", headers=admin).status_code == 404
    empty = stack.create_instance()
    assert stack.http.delete(f"/instances/{empty['id']}", headers=admin).json() == {"removed": True, "cancelled": 0}
    assert stack.one("SELECT count(*) AS n FROM messages WHERE instance_id = %s", (instance["id"],))["n"] == 0
    assert stack.one("SELECT count(*) AS n FROM dramatiq.queue")["n"] == 1, "only the other instance's dispatch"
    assert stack.statuses([kept]) == {kept: "scheduled"}
    response = stack.http.post(f"{stack.base(instance)}/send-text", json={"phone": "5511999999999", "message": "x"})
    assert response.status_code == 401, "a removed instance is an unknown one"
    listed = stack.http.get("/instances", headers=admin).json()
    assert [i["id"] for i in listed] == [other["id"]]


def test_cancelling_a_delayed_message_does_not_delay_the_next_estimate(stack: Stack) -> None:
    instance = stack.create_instance()
    tomorrow = stack.send_text(instance, "tomorrow", delayMessage=86400)
    stack.http.delete(f"{stack.base(instance)}/queue/{tomorrow['zaapId']}")
    now = stack.send_text(instance, "now")
    assert now["status"] == "available" and now["scheduledFor"] < tomorrow["scheduledFor"]
    stack.wait_completed([now["zaapId"]], timeout=30)


def test_paused_head_is_not_shown_available_and_status_filter_uses_shown_status(stack: Stack) -> None:
    instance = stack.create_instance()
    base = stack.base(instance)
    head = stack.send_text(instance, "head", delayMessage=2)["zaapId"]
    stack.http.post(f"{base}/pause")
    wait_until(lambda: stack.one("SELECT available_at < now() AS due FROM messages")["due"], 10, "the due time")
    assert stack.http.get(f"{base}/queue/{head}").json()["status"] == "scheduled"
    assert stack.http.get(f"{base}/queue", params={"status": "available"}).json()["total"] == 0
    stack.http.post(f"{base}/resume")
    stack.wait_completed([head], timeout=30)


def test_z_api_queue_paging_count_status_and_token_rotation(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    instance = stack.create_instance()
    base = stack.base(instance)
    ids = [stack.send_text(instance, f"m{n}", delayMessage=3600)["zaapId"] for n in range(5)]
    second = stack.http.get(f"{base}/queue", params={"page": 2, "pageSize": 2}).json()
    assert [m["zaapId"] for m in second["messages"]] == ids[2:4]
    assert (second["page"], second["pageSize"], second["total"]) == (2, 2, 5)
    assert stack.http.get(f"{base}/queue", params={"pageSize": 0}).json()["field"] == "pageSize"
    assert stack.http.get(f"{base}/queue", params={"page": "x"}).json()["field"] == "page"
    assert stack.http.get(f"{base}/queue/count").json() == {"count": 5}
    assert stack.http.get(f"{base}/status").json()["queueDepth"] == 5
    stack.http.delete(f"{base}/queue/{ids[0]}")
    assert stack.http.get(f"{base}/queue/count").json() == {"count": 4}

    rotated = stack.http.post(f"/instances/{instance['id']}/rotate-token", headers=admin).json()
    assert rotated["token"] != instance["token"] and rotated["id"] == instance["id"]
    assert stack.http.get(f"{base}/queue/count").status_code == 401, "the old token stops working"
    assert stack.http.get(f"{stack.base(rotated)}/queue/count").json() == {"count": 4}
    assert stack.http.post(f"/instances/{instance['id']}/rotate-token").status_code == 401


def test_a_send_answer_says_whether_the_phone_is_online(stack: Stack) -> None:
    online, offline = stack.create_instance(), stack.create_instance()
    assert stack.send_text(online, "hi")["whatsAppStatus"] == {"connected": True, "reason": "connected"}
    assert stack.http.post(f"{stack.base(offline)}/disconnect").status_code == 200
    answer = stack.send_text(offline, "waits")
    assert answer["whatsAppStatus"] == {"connected": False, "reason": "simulator switch"}
    assert answer["status"] in ("scheduled", "available")


def test_an_instance_over_its_cap_per_minute_is_told_when_to_retry(stack: Stack) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    capped = stack.http.post("/instances", json={"maxMessagesPerMinute": 3}, headers=admin).json()
    free = stack.create_instance()
    for n in range(3):
        stack.send_text(capped, f"m{n}", delayMessage=3600)
    before = stack.counts()
    over = stack.http.post(f"{stack.base(capped)}/send-text", json={"phone": "5511999999999", "message": "m3"})
    assert (over.status_code, over.json()["field"]) == (429, "instance"), over.text
    assert 1 <= int(over.headers["Retry-After"]) <= 60 and "at most 3 messages a minute" in over.json()["error"]
    assert stack.counts() == before, "nothing stored for a refused send"
    assert [stack.send_text(free, f"f{n}")["status"] for n in range(5)], "other instances are not capped"
    # A minute later (the window moved back here), the instance accepts again, in sequence.
    stack.all("UPDATE instance_queues SET rate_window_start = now() - interval '61 seconds' WHERE instance_id = %s"
              " RETURNING instance_id", (capped["id"],))
    assert stack.send_text(capped, "m4", delayMessage=3600)["sequence"] == 4
    bad = stack.http.post("/instances", json={"maxMessagesPerMinute": 0}, headers=admin)
    assert (bad.status_code, bad.json()["field"]) == (400, "maxMessagesPerMinute")


def test_z_api_queue_answers_and_cursor_paging(stack: Stack) -> None:
    """Z-API's queue answer keys beside ours, and its cursor paging (`POST queue`)."""
    instance = stack.create_instance()
    base = stack.base(instance)
    ids = [stack.send_text(instance, f"m{n}", delayMessage=3600, delayTyping=2)["zaapId"] for n in range(5)]
    first = stack.http.get(f"{base}/queue", params={"page": 1, "pageSize": 100}).json()
    assert first["size"] == 5
    entry = first["messages"][0]
    assert {k: entry[k] for k in ("_id", "ZaapId", "MessageId", "InstanceId", "Phone", "Message", "DelayMessage",
                                  "DelayTyping", "IsTrial")} == {
        "_id": ids[0], "ZaapId": ids[0], "MessageId": ids[0], "InstanceId": instance["id"], "Phone": "5511999999999",
        "Message": "m0", "DelayMessage": 3600, "DelayTyping": 2, "IsTrial": False}
    assert abs(entry["Created"] / 1000 - datetime.fromisoformat(entry["enqueuedAt"]).timestamp()) < 0.01

    seen, state, answers = [], None, 0
    while True:
        page = stack.http.post(f"{base}/queue", json={"pageSize": 2, "pagingState": state}).json()
        seen += [m["ZaapId"] for m in page["messages"]]
        answers += 1
        if not page["hasMore"]:
            assert page["pagingState"] is None
            break
        state = page["pagingState"]
    assert seen == ids and answers == 3
    assert stack.http.post(f"{base}/queue").json()["messages"][0]["ZaapId"] == ids[0]  # no body: the first 20
    for body, field in (({"pageSize": 0}, "pageSize"), ({"pagingState": "not-ours"}, "pagingState"),
                        ({"pageSize": "2"}, "pageSize")):
        answer = stack.http.post(f"{base}/queue", json=body)
        assert answer.status_code == 400 and answer.json()["field"] == field, body
