"""The maintenance loop: a daemon thread of each worker process that runs every task once per
`MESSAGE_QUEUE_MAINTENANCE_INTERVAL`. Each task runs in a transaction that first takes the
maintenance advisory lock, so at most one process does it at a time; the tasks re-check every
message under its instance lock as well, so even two leaders could not act twice."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.core import Coordinator
from workers.maintenance import dispatcher, rescuer, retention

logger = logging.getLogger("wmq.maintenance")

TASKS: tuple[tuple[str, Callable[[Coordinator], int]], ...] = (
    ("rescuer", rescuer.run),
    ("dispatcher", dispatcher.run),
    ("retention", retention.run),
)


class MaintenanceLoop(threading.Thread):
    def __init__(self, coordinator: Coordinator, interval: float) -> None:
        super().__init__(name="wmq-maintenance", daemon=True)
        self.coordinator = coordinator
        self.interval = interval
        self.stopping = threading.Event()

    def run_once(self) -> dict[str, int]:
        done: dict[str, int] = {}
        for name, task in TASKS:
            try:
                done[name] = task(self.coordinator)
            except Exception:
                logger.exception("maintenance task failed", extra={"task": name})
        return done

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.run_once()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
