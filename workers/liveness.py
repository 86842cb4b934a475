"""Liveness that survives database outages: this worker's heartbeat, and whether this process
may judge others dead.

dramatiq-postgres writes heartbeats from its consumer loop, which stalls while the database is
away; after an outage every heartbeat is stale and whoever reconnects first would take its peers
for dead, resending what they had sent (issue 11). Here a thread of its own writes the
heartbeat every MESSAGE_QUEUE_HEARTBEAT_INTERVAL, retrying every half second while the database
is unreachable, and keeps how long this process has had *continuous* database access. A process
may declare another worker dead (the rescuer, the broker's reaper) only once it has had that
access for longer than the TTL: by then every live worker has been back for long enough to
heartbeat. A gap between two of its own heartbeats (a failed write, or the process itself stood
still: SIGSTOP, a VM pause) starts the count again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from uuid import UUID

import psycopg

from workers.background import Background, Connection
from workers.broker import HEARTBEAT, LEAVE

logger = logging.getLogger("wmq.liveness")

#: How soon a failed heartbeat is tried again: workers are back within this of the database.
RETRY_SECONDS = 0.5


#: The heartbeat's own connection: it must notice a lost database within seconds.
CONNECT_OPTIONS = {"autocommit": True, "connect_timeout": 3, "application_name": "wmq-heartbeat",
                   "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}


class Heartbeat(Background):
    """The heartbeat thread (workers/background.py runs its rounds). It keeps its connection
    itself, not through the loop: a failed connection is a failed beat, counted as the database
    away, and the alive file is touched all the same."""

    def __init__(self, database_url: str, worker_id: UUID, *, interval: float, ttl: float,
                 alive_file: Path | None = None) -> None:
        # A round raises only on a bug (a database error is a failed beat): tried again as one.
        super().__init__("wmq-heartbeat", logger=logger, retry=RETRY_SECONDS, max_retry=RETRY_SECONDS,
                         stop_timeout=5)
        self.database_url = database_url
        self.worker_id = worker_id
        self.interval = interval
        self.ttl = ttl
        #: Touched on every round, whether the database answered or not (an outage is not a
        #: death): what `wmq healthcheck worker`, the container's liveness check, reads.
        self.alive_file = alive_file
        self._conn: Connection | None = None
        self._last_ok: float | None = None
        self._continuous_since: float | None = None

    def beat(self) -> bool:
        """Write the heartbeat once; False if the database could not be reached."""
        now = time.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self.connect(self.database_url, **CONNECT_OPTIONS)
                if self._conn is None:
                    return False  # stopped while connecting
            self._conn.execute(HEARTBEAT, (self.worker_id,))
        except psycopg.Error:
            if self._continuous_since is not None:
                logger.warning("heartbeat failed: the database is unreachable", exc_info=True)
            self._continuous_since = None
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return False
        if self._last_ok is None or self._continuous_since is None or now - self._last_ok > self._max_gap():
            self._continuous_since = now
        self._last_ok = now
        return True

    def _max_gap(self) -> float:
        return 2 * self.interval + RETRY_SECONDS

    def may_judge(self) -> bool:
        """Whether this process has had continuous database access for longer than the TTL, its
        last heartbeat recent: only then may it take a stale heartbeat for a dead worker."""
        since, last = self._continuous_since, self._last_ok
        now = time.monotonic()
        return since is not None and last is not None and now - since > self.ttl and now - last <= self._max_gap()

    def round(self, conn: Connection | None) -> float:
        beaten = self.beat()
        self._touch()
        return self.interval if beaten else RETRY_SECONDS

    def _touch(self) -> None:
        if self.alive_file is None:
            return
        try:
            self.alive_file.touch()
        except OSError:
            logger.warning("could not touch the liveness file", extra={"path": str(self.alive_file)})

    def stop(self, *, leave: bool = False) -> None:
        """Stop beating; with `leave`, also take this worker out of the live ones at once (a clean
        stop, once its sends are recorded and its leases given up), rather than after the TTL."""
        super().stop()
        if leave:
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(LEAVE, (self.worker_id,))
            except psycopg.Error:
                logger.warning("could not leave the live workers: counted until the TTL", exc_info=True)
        if self._conn is not None:
            self._conn.close()
