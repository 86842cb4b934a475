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
import threading
import time
from typing import Any

import psycopg

from workers.broker import LISTEN_DUE, NEXT_DUE, WAKE_QUEUE

logger = logging.getLogger("wmq.waker")

#: Longest sleep between two looks, whatever happens (a lost NOTIFY, a reconnection).
MAX_SLEEP = 5.0


class DueTimeWaker(threading.Thread):
    def __init__(self, database_url: str, queues: list[str]) -> None:
        super().__init__(name="wmq-waker", daemon=True)
        self.database_url = database_url
        self.queues = queues
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    conn.execute(LISTEN_DUE)
                    self._loop(conn)
            except Exception:
                logger.warning("due-time waker reconnecting", exc_info=True)
                self._stopping.wait(1.0)

    def _loop(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            waits = {q: w for q in self.queues if (w := self._next_due(conn, q)) is not None}
            sleep = min([MAX_SLEEP, *waits.values()])
            # Sleep until the earliest due time, or until a new future dispatch may bring it closer;
            # then wake every queue whose message fell due meanwhile.
            started = time.monotonic()
            for _ in conn.notifies(timeout=max(sleep, 0), stop_after=1):
                pass
            elapsed = time.monotonic() - started
            for queue, wait in waits.items():
                if wait <= elapsed + 0.001:
                    conn.execute(WAKE_QUEUE, (queue,))

    @staticmethod
    def _next_due(conn: psycopg.Connection[Any], queue: str) -> float | None:
        row = conn.execute(NEXT_DUE, (queue,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=1.0)  # a daemon: a sleep in progress ends with the process
