"""/metrics in Prometheus' format, scraped from a real API while a real worker sends: the
database gauges follow the queue, the API's counters move with the requests that move them."""

from __future__ import annotations

import socket
from typing import Any

import httpx
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


def test_each_worker_counts_its_sends_on_its_own_port(make_stack: Any) -> None:
    port = free_port()
    stack: Stack = make_stack(WORKER_METRICS_PORT=str(port))
    instance = stack.create_instance()
    stack.wait_completed([stack.send_text(instance, f"m{n}")["zaapId"] for n in range(2)], timeout=30)
    stack.simulate(instance, failNext=1, failMode="permanent")
    refused = stack.send_text(instance, "not on WhatsApp")["zaapId"]
    wait_until(lambda: stack.job(refused)["status"] == "discarded", 30, "the discard")

    def samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    counted = wait_until(lambda: (s := samples()).get(("wmq_worker_send_failures_total", (
        ("message_type", "text"), ("outcome", "discarded")))) == 1 and s, 10, "the worker's counters")
    assert counted[("wmq_worker_messages_sent_total", (("message_type", "text"),))] == 2
    assert counted[("wmq_whatsapp_call_seconds_count", (("message_type", "text"),))] == 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
