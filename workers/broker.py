"""The dramatiq-postgres broker, built with an explicit middleware list (rule R4).

Left out on purpose: `Retries` (the core retries, keeping the message head), `TimeLimit` (it
raises inside a thread, possibly between a send and its bookkeeping; the transport call has its
own timeout), `AgeLimit` (a message may wait for days), `ShutdownNotifications` (same hazard as
TimeLimit), callbacks, pipelines and results (messages carry ids only).
"""

from __future__ import annotations

from dramatiq.middleware import Middleware
from dramatiq_postgres import PostgresBroker
from psycopg_pool import ConnectionPool

from service.settings import Settings


def build_broker(pool: ConnectionPool, settings: Settings, middleware: list[Middleware]) -> PostgresBroker:
    """A broker on our own pool; poll, heartbeat and upkeep intervals from our settings."""
    return PostgresBroker(
        pool=pool,
        results=False,
        middleware=middleware,
        poll_interval=settings.message_queue_poll_interval,
        heartbeat_interval=settings.message_queue_heartbeat_interval,
        heartbeat_ttl=settings.message_queue_heartbeat_ttl,
        maintenance_interval=settings.message_queue_maintenance_interval,
    )
