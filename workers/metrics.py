"""A worker's own Prometheus counters, served on `WORKER_METRICS_PORT` when set (one port per
worker process: in Kubernetes, one per pod, scraped by a PodMonitor or the usual
`prometheus.io/port` annotation). Labels are message types and outcomes, never instances."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

logger = logging.getLogger("wmq.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
SENT = Counter("wmq_worker_messages_sent", "Messages sent and recorded", ["message_type"], registry=REGISTRY)
FAILED = Counter("wmq_worker_send_failures", "Sends that failed, by what became of the message",
                 ["message_type", "outcome"], registry=REGISTRY)
SNOOZED = Counter("wmq_worker_snoozed", "Heads put back because the instance was not connected",
                  ["message_type"], registry=REGISTRY)
CALL_SECONDS = Histogram("wmq_whatsapp_call_seconds", "Duration of the WhatsApp send call", ["message_type"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)


def serve(port: int | None) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)
        logger.info("worker metrics served", extra={"port": port})
