"""Delete finished messages (completed, cancelled, discarded) and their history once they are
older than `MESSAGE_QUEUE_RETENTION_PERIOD`, webhook deliveries delivered or given up as long ago,
and idempotency keys older than a day, in batches."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from service.core import maintenance
from service.core.context import Core

logger = logging.getLogger("wmq.maintenance.retention")


def run(core: Core, conn: psycopg.Connection[Any]) -> int:
    purged = maintenance.purge_finished(core, conn)
    if purged:
        logger.info("finished messages purged", extra={"count": purged})
    keys = maintenance.purge_idempotency_keys(core, conn)
    if keys:
        logger.info("expired idempotency keys purged", extra={"count": keys})
    deliveries = maintenance.purge_webhook_deliveries(core, conn)
    if deliveries:
        logger.info("finished webhook deliveries purged", extra={"count": deliveries})
    return purged
