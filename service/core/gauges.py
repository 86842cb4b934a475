"""What the service's gauges say, read from the database in one query: messages per status,
instances connected / not connected / paused, how long the oldest due message has waited for a
thread, live workers, webhook deliveries pending. Whichever process serves a scrape reads it,
at most once every few seconds (`Snapshot`), so several scrapers cost one query."""

from __future__ import annotations

import threading
import time
from typing import Any

from service.core import queries
from service.core.context import Core

STATUSES = ("scheduled", "running", "typing", "sending", "retryable", "completed", "cancelled", "discarded")


class Snapshot:
    def __init__(self, core: Core, max_age: float = 5.0) -> None:
        self.core = core
        self.max_age = max_age
        self._taken = 0.0
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()

    def values(self) -> dict[str, Any]:
        with self._lock:
            if time.monotonic() - self._taken > self.max_age:
                row = self.core.one(queries.METRICS_SNAPSHOT, ttl_s=self.core.settings.message_queue_heartbeat_ttl)
                assert row is not None
                self._values = {**row, "statuses": {s: int(row["statuses"].get(s, 0)) for s in STATUSES}}
                self._taken = time.monotonic()
            return self._values
