"""The due-time waker: notify a queue the moment its next delayed message falls due.

dramatiq-postgres' NOTIFY fires when a message is inserted; a message inserted with a future
`available_at` is otherwise found by the consumers' next poll, up to a poll interval late. The
waker sleeps until the earliest future `available_at` of each queue and then sends the queue's
NOTIFY, so delayed messages start within milliseconds of their due time whatever the poll
interval. Dispatches of future messages `NOTIFY wmq.due`, which makes it look again.
Every worker runs one: a duplicate NOTIFY only wakes a consumer that finds nothing to claim.
"""

from __future__ import annotations

import logging
import time

from workers.background import Background, Connection
from workers.broker import LISTEN_DUE, NEXT_DUE, WAKE_QUEUE

logger = logging.getLogger("wmq.waker")

#: Longest sleep between two looks, whatever happens (a lost NOTIFY, a reconnection).
MAX_SLEEP = 5.0


class DueTimeWaker(Background):
    """A round wakes the queues whose message fell due during the wait before it, then looks for
    each queue's next due time and sleeps until the earliest (workers/background.py waits, on its
    own connection, LISTENing to `wmq.due`: a new future dispatch may bring it closer)."""

    def __init__(self, database_url: str, queues: list[str]) -> None:
        super().__init__("wmq-waker", logger=logger, conninfo=database_url, listen=LISTEN_DUE, stop_timeout=1.0)
        self.database_url = database_url
        self.queues = queues
        #: When (monotonic) each queue's next message falls due, as the last round found.
        self._due: dict[str, float] = {}

    def round(self, conn: Connection | None) -> float:
        assert conn is not None  # the waker has a connection of its own
        now = time.monotonic()
        for queue, due in self._due.items():
            if due <= now + 0.001:
                conn.execute(WAKE_QUEUE, (queue,))
        waits = {q: w for q in self.queues if (w := self._next_due(conn, q)) is not None}
        looked = time.monotonic()
        self._due = {queue: looked + wait for queue, wait in waits.items()}
        return min([MAX_SLEEP, *waits.values()])

    @staticmethod
    def _next_due(conn: Connection, queue: str) -> float | None:
        row = conn.execute(NEXT_DUE, (queue,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])
