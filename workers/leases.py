"""The lease keeper: a thread of every worker that runs its round of session leases
(service/sql/functions/25_leases.sql) every `MESSAGE_QUEUE_LEASE_INTERVAL`: renew what it owns,
give away what exceeds its fair share, take free ones (and, as a judge, expired ones). The
session transports read what it owns (`SessionHost.instances`); on stop it gives every lease up,
after the worker has finished its sends and closed its sessions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

from service.core.session_host import SessionHost
from workers.background import Background, Connection

logger = logging.getLogger("wmq.leases")

#: How soon a failed round is tried again.
RETRY_SECONDS = 0.5


class LeaseKeeper(Background):
    """The lease rounds (workers/background.py runs them: a failed one is logged and tried again
    after `RETRY_SECONDS`), on the host's pool: no connection of its own."""

    def __init__(self, host: SessionHost, *, interval: float, judge: Callable[[], bool]) -> None:
        super().__init__("wmq-leases", logger=logger, retry=RETRY_SECONDS, max_retry=RETRY_SECONDS,
                         stop_timeout=10)
        self.host = host
        self.interval = interval
        self.judge = judge
        self._draining = False
        self.owned: dict[UUID, str] = {}

    def drain(self) -> None:
        """From now on only renew: the worker is stopping and finishes its sends."""
        self._draining = True

    def round(self, conn: Connection | None = None) -> float:
        """One lease round; the next comes after `interval`."""
        before = set(self.owned)
        self.owned = dict(self.host.lease_round(judge=self.judge(), acquire=not self._draining))
        gained, lost = set(self.owned) - before, before - set(self.owned)
        if gained or lost:
            logger.info("session leases changed", extra={
                "owned": len(self.owned), "gained": len(gained), "lost": len(lost)})
        return self.interval

    def stop(self) -> None:
        """Stop the rounds and give every lease up (their heads wait for the next owners)."""
        super().stop()
        try:
            self.host.lease_round(judge=False, stopping=True)
            logger.info("session leases given up", extra={"count": len(self.owned)})
        except Exception:
            logger.warning("could not give the session leases up: they expire after the TTL", exc_info=True)
