"""Delete finished messages (completed, cancelled, discarded) and their history once they are
older than `MESSAGE_QUEUE_RETENTION_PERIOD`, in batches."""

from __future__ import annotations

import logging

from service.core import Coordinator

logger = logging.getLogger("wmq.maintenance.retention")


def run(coordinator: Coordinator) -> int:
    purged = coordinator.purge_finished() or 0
    if purged:
        logger.info("finished messages purged", extra={"count": purged})
    return purged
