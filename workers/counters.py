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
#: Seconds, from sub-second (the waker's precision) to an hour behind (a backlog, an outage).
_LATE = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LATENESS = Histogram("wmq_lateness_seconds", "How late a message started (its typing, or its send) against its "
                     "due time, first attempts", ["message_type"], buckets=_LATE, registry=REGISTRY)
ACCEPT_TO_SEND = Histogram("wmq_accept_to_send_seconds", "From the API's accept to the recorded send",
                           ["message_type"], buckets=(*_LATE, 21600, 86400), registry=REGISTRY)
RESCUED = Counter("wmq_worker_rescued", "Messages of dead workers rescued by this process's maintenance, by "
                  "what became of them (again: queued to go again; discarded: not resent)", ["outcome"],
                  registry=REGISTRY)
RESENT = Counter("wmq_worker_resent", "Sends of uncertain outcome queued to go again "
                 "(MESSAGE_QUEUE_RESEND_UNCERTAIN): each may reach the phone twice", registry=REGISTRY)
WEBHOOKS = Counter("wmq_webhook_deliveries", "Webhook delivery attempts, by event and outcome "
                   "(delivered, failed: will be tried again, given_up)", ["event", "outcome"], registry=REGISTRY)


def serve(port: int | None) -> None:
    if port:
        start_http_server(port, registry=REGISTRY)
        logger.info("worker metrics served", extra={"port": port})
