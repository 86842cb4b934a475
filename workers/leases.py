"""The lease keeper: a thread of every worker that runs its round of session leases
(service/sql/functions/25_leases.sql) every `MESSAGE_QUEUE_LEASE_INTERVAL`: renew what it owns,
give away what exceeds its fair share, take free ones (and, as a judge, expired ones). The
session transports read what it owns (`SessionHost.instances`); on stop it gives every lease up,
after the worker has finished its sends and closed its sessions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from uuid import UUID

from service.core.sessions import SessionHost

logger = logging.getLogger("wmq.leases")

#: How soon a failed round is tried again.
RETRY_SECONDS = 0.5


class LeaseKeeper(threading.Thread):
    def __init__(self, host: SessionHost, *, interval: float, judge: Callable[[], bool]) -> None:
        super().__init__(name="wmq-leases", daemon=True)
        self.host = host
        self.interval = interval
        self.judge = judge
        self._stopping = threading.Event()
        self._draining = False
        self.owned: dict[UUID, str] = {}

    def drain(self) -> None:
        """From now on only renew: the worker is stopping and finishes its sends."""
        self._draining = True

    def round(self) -> None:
        before = set(self.owned)
        self.owned = dict(self.host.lease_round(judge=self.judge(), acquire=not self._draining))
        gained, lost = set(self.owned) - before, before - set(self.owned)
        if gained or lost:
            logger.info("session leases changed", extra={
                "owned": len(self.owned), "gained": len(gained), "lost": len(lost)})

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.round()
                wait = self.interval
            except Exception:
                logger.warning("session lease round failed", exc_info=True)
                wait = RETRY_SECONDS
            self._stopping.wait(wait)

    def stop(self) -> None:
        """Stop the rounds and give every lease up (their heads wait for the next owners)."""
        self._stopping.set()
        self.join(timeout=10)
        try:
            self.host.lease_round(judge=False, stopping=True)
            logger.info("session leases given up", extra={"count": len(self.owned)})
        except Exception:
            logger.warning("could not give the session leases up: they expire after the TTL", exc_info=True)
