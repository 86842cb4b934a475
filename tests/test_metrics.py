"""/metrics in Prometheus' format, scraped from a real API while a real worker sends: the
database gauges follow the queue, the API's counters move with the requests that move them."""

from __future__ import annotations

import signal
import socket
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import Stack, wait_until
from tests.webhook_receiver import Receiver, configure


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = stack.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def test_gauges_follow_the_queue_and_counters_the_requests(stack: Stack) -> None:
    instance = stack.create_instance()
    offline = stack.create_instance()
    before = scrape(stack)
    assert before[("wmq_live_workers", ())] == 1
    assert before[("wmq_instances_disconnected_with_backlog", ())] == 0
    ids = [stack.send_text(instance, f"m{n}")["zaapId"] for n in range(3)]
    waiting = stack.send_text(instance, "later", delayMessage=3600)["zaapId"]
    stack.simulate(offline, connected=False)
    stack.send_text(offline, "when the phone is back")
    stack.wait_completed(ids, timeout=30)
    assert stack.http.post(f"{stack.base(instance)}/send-text", json={"phone": "1"}).status_code == 400

    def settled() -> dict | None:  # the gauges are read at most every 5 s
        now = scrape(stack)
        return now if now[("wmq_messages", (("status", "completed"),))] == 3 else None

    after = wait_until(settled, 15, "the gauges to show the sends")
    assert after[("wmq_messages", (("status", "scheduled"),))] == 2, waiting
    assert after[("wmq_instances_disconnected_with_backlog", ())] == 1
    accepted = ("wmq_messages_accepted_total", (("message_type", "text"),))
    assert after[accepted] - before.get(accepted, 0) == 5
    timed = ("wmq_enqueue_seconds_count", (("message_type", "text"),))
    assert after[timed] - before.get(timed, 0) == 5
    refused = ("wmq_requests_refused_total", (("status", "400"),))
    assert after[refused] - before.get(refused, 0) == 1
    assert after[("wmq_instances", (("connection", "connected"),))] >= 1
    assert after[("wmq_oldest_due_seconds", ())] == 0, "nothing due is waiting"
    assert not any("instance" in dict(labels) for _, labels in after), "no per-instance labels"

    cancelled = ("wmq_messages_cancelled_total", ())
    assert stack.http.delete(f"{stack.base(instance)}/queue/{waiting}").status_code == 200
    assert scrape(stack)[cancelled] - after.get(cancelled, 0) == 1
    assert stack.http.delete(f"{stack.base(offline)}/queue").json() == {"cancelled": 1}
    assert scrape(stack)[cancelled] - after.get(cancelled, 0) == 2


def worker_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_each_worker_counts_its_sends_on_its_own_port(make_stack: Any, receiver: Receiver) -> None:
    port = free_port()
    stack: Stack = make_stack(WORKER_METRICS_PORT=str(port))
    instance = stack.create_instance()
    configure(stack, instance, "update-webhook-delivery", receiver.url)
    receiver.fail = 1
    stack.wait_completed([stack.send_text(instance, f"m{n}", delayTyping=0.2)["zaapId"] for n in range(2)], 30)
    stack.simulate(instance, failNext=1, failMode="permanent")
    refused = stack.send_text(instance, "not on WhatsApp")["zaapId"]
    wait_until(lambda: stack.job(refused)["status"] == "discarded", 30, "the discard")
    wait_until(lambda: len(receiver.requests) == 4, 30, "a failed webhook try, then three deliveries")

    counted = wait_until(lambda: (s := worker_samples(port)).get(("wmq_webhook_deliveries_total", (
        ("event", "delivery"), ("outcome", "delivered")))) == 3 and s, 10, "the worker's counters")
    text = (("message_type", "text"),)
    assert counted[("wmq_worker_send_failures_total", (*text, ("outcome", "discarded")))] == 1
    assert counted[("wmq_worker_messages_sent_total", text)] == 2
    assert counted[("wmq_whatsapp_call_seconds_count", text)] == 3
    assert counted[("wmq_webhook_deliveries_total", (("event", "delivery"), ("outcome", "failed")))] == 1
    # Each message's lateness once (at its typing, not again at its send), and the time from
    # accept to send of the two sent, which includes their 0.2 s of typing.
    assert counted[("wmq_lateness_seconds_count", text)] == 3
    assert counted[("wmq_accept_to_send_seconds_count", text)] == 2
    assert counted[("wmq_accept_to_send_seconds_bucket", (("le", "0.1"), *text))] == 0
    assert counted[("wmq_accept_to_send_seconds_sum", text)] >= 0.4


def test_a_rescue_and_its_resend_are_counted_by_the_worker_that_rescues(make_stack: Any) -> None:
    stack: Stack = make_stack()
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=3000)
    zaap_id = stack.send_text(instance, "in flight when its worker dies")["zaapId"]
    stack.wait_status(zaap_id, "sending")
    port = free_port()
    stack.env["WORKER_METRICS_PORT"] = str(port)
    stack.start_worker()  # this one serves its counters; the first one, about to die, none
    stack.stop_process(stack.workers[0], signal.SIGKILL)
    stack.simulate(instance, latencyMs=0)

    counted = wait_until(lambda: (s := worker_samples(port)).get(
        ("wmq_worker_rescued_total", (("outcome", "again"),))) == 1 and s, 30, "the rescue to be counted")
    assert counted[("wmq_worker_resent_total", ())] == 1, "it was sending: going again is a resend"
    stack.wait_status(zaap_id, "completed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
