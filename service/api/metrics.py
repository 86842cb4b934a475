"""`/metrics` in Prometheus' text format: the database gauges (service/core/gauges.py) and
the API's own counters. Labels are message types, statuses and outcomes, never instances or
phones (bounded cardinality; per-instance figures belong to the queue routes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from service.core.gauges import Snapshot

REGISTRY = CollectorRegistry(auto_describe=True)
ACCEPTED = Counter("wmq_messages_accepted", "Sends accepted (committed) by this API process",
                   ["message_type"], registry=REGISTRY)
CANCELLED = Counter("wmq_messages_cancelled", "Messages cancelled through this API process (routes and dashboard)",
                    registry=REGISTRY)
ENQUEUE_SECONDS = Histogram("wmq_enqueue_seconds", "A send request's enqueue (the database call) in this API process",
                            ["message_type"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
                            registry=REGISTRY)
REFUSED = Counter("wmq_requests_refused", "Requests answered with an error by this API process, by status",
                  ["status"], registry=REGISTRY)


class DatabaseGauges:
    """A collector reading the snapshot at scrape time."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        values: dict[str, Any] = self.snapshot.values()
        messages = GaugeMetricFamily("wmq_messages", "Messages stored, by status", labels=["status"])
        for status, count in values["statuses"].items():
            messages.add_metric([status], count)
        yield messages
        instances = GaugeMetricFamily("wmq_instances", "Instances, by connection", labels=["connection"])
        instances.add_metric(["connected"], values["connected"])
        instances.add_metric(["not_connected"], values["not_connected"])
        yield instances
        yield GaugeMetricFamily("wmq_instances_paused", "Paused instances", value=values["paused"])
        yield GaugeMetricFamily("wmq_instances_disconnected_with_backlog",
                                "Instances not connected that have messages to send",
                                value=values["disconnected_with_backlog"])
        yield GaugeMetricFamily("wmq_oldest_due_seconds", "How long the oldest due message has waited for a worker",
                                value=float(values["oldest_due_s"]))
        yield GaugeMetricFamily("wmq_live_workers", "Worker processes with a fresh heartbeat",
                                value=values["live_workers"])
        yield GaugeMetricFamily("wmq_webhook_deliveries_pending", "Webhook deliveries not yet delivered",
                                value=values["webhooks_pending"])


def exposition(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseGauges(snapshot))
    return generate_latest(REGISTRY) + generate_latest(registry)
