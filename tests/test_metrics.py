"""/metrics in Prometheus' format, scraped from a real API while a real worker sends: the
database gauges follow the queue, the API's counters move with the requests that move them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.stack import Stack, wait_until


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = stack.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_gauges_follow_the_queue_and_counters_the_requests(stack: Stack) -> None:
    instance = stack.create_instance()
    before = scrape(stack)
    assert before[("wmq_live_workers", ())] == 1
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(3)]
    waiting = stack.send_text(instance, "later", delayMessage=3600)["zaapId"]
    stack.wait_completed(ids, timeout=30)
    assert stack.http.post(f"{stack.base(instance)}/send-text", json={"phone": "1"}).status_code == 400

    def settled() -> dict | None:  # the gauges are read at most every 5 s
        now = scrape(stack)
        return now if now[("wmq_messages", (("status", "completed"),))] == 3 else None

    after = wait_until(settled, 15, "the gauges to show the sends")
    assert after[("wmq_messages", (("status", "scheduled"),))] == 1, waiting
    accepted = ("wmq_messages_accepted_total", (("message_type", "text"),))
    assert after[accepted] - before.get(accepted, 0) == 4
    refused = ("wmq_requests_refused_total", (("status", "400"),))
    assert after[refused] - before.get(refused, 0) == 1
    assert after[("wmq_instances", (("connection", "connected"),))] >= 1
    assert after[("wmq_oldest_due_seconds", ())] == 0, "nothing due is waiting"
    assert not any("instance" in dict(labels) for _, labels in after), "no per-instance labels"
