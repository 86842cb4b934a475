"""The one loop of a worker's long-lived threads: do a round, wait, again, until stopped.

Why it exists: the heartbeat, the lease keeper, the maintenance loop, the due-time waker, the
webhook poster and the WhatsApp session manager each ran that loop with its own copy of the
stop event, the reconnection after a database loss and the logging of a failed round, each a
little different (some not stoppable while connecting or sleeping, some ended by the first
unexpected exception). Here it is once; each
thread's module holds only its work: `round(conn)` does one round and returns how long to wait
before the next (the maintenance loop also waits once before its first, `first_wait`).

What the loop guarantees every thread:
- **A prompt stop.** `stop()` ends a wait, or a connection attempt that the server does not
  answer, within `STOP_CHECK`; only a round in progress is waited for (up to `stop_timeout`).
- **Its own connection, when it wants one** (`conninfo`): opened before the first round, with
  `listen` executed on it (a NOTIFY on that channel then ends the wait early), and replaced after
  any failure. Threads without one (the pool's users) get `None`; the heartbeat, whose failed
  connection is a failed beat it must count, keeps its own with `connect`.
- **A failed round is no death.** An exception in a round (or while connecting, or a connection
  lost while waiting) is logged with the thread's name, the connection dropped, and the loop goes
  on after `retry` seconds, doubled with each further failure in a row up to `max_retry`: by
  default 0.5 s then 1 s, so that every thread is back within about a second of the database
  (README, "What happens when things go wrong"). The first failure of a row is logged with its
  traceback, the next ones in one line; the first round that works again says so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

#: How soon a stop is noticed by a wait on NOTIFY or by a connection attempt, neither of which
#: can be interrupted: they are cut in slices of this length.
STOP_CHECK = 0.1
#: The default first wait after a failure, and the most it grows to.
RETRY = 0.5
MAX_RETRY = 1.0
#: How the threads' own connections are opened (as the pools' are, `make_pool`), named after the thread.
CONNECT_OPTIONS: dict[str, Any] = {"autocommit": True, "connect_timeout": 5}

Connection = psycopg.Connection[Any]


class Background(threading.Thread):
    """A daemon thread running `round` until `stop()`. Subclasses implement `round` and may
    extend `stop` with what must happen once the loop has ended (leave, give up, close)."""

    def __init__(self, name: str, *, logger: logging.Logger, conninfo: str | None = None,
                 connect_options: dict[str, Any] | None = None, listen: str | None = None,
                 first_wait: float = 0.0, retry: float = RETRY, max_retry: float = MAX_RETRY,
                 stop_timeout: float = 5.0) -> None:
        super().__init__(name=name, daemon=True)
        if listen is not None and conninfo is None:
            raise ValueError("a thread that LISTENs needs a connection of its own (conninfo)")
        self.logger = logger
        self.conninfo = conninfo
        self.connect_options = {**CONNECT_OPTIONS, "application_name": name, **(connect_options or {})}
        self.listen = listen
        self.first_wait = first_wait
        self.retry, self.max_retry = retry, max_retry
        self.stop_timeout = stop_timeout
        self.stopping = threading.Event()
        self._failures = 0
        self._delay = retry

    def round(self, conn: Connection | None) -> float:
        """One round of the thread's work, on its own connection (None if it has none); how long
        to wait before the next round."""
        raise NotImplementedError

    def stop(self) -> None:
        """End the loop: at once if it is waiting or connecting, else after its round (waiting at
        most `stop_timeout`: the thread is a daemon, and a round stuck past it ends with the process)."""
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(timeout=self.stop_timeout)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        conn: Connection | None = None
        try:
            self._wait(None, self.first_wait)
            while not self.stopping.is_set():
                doing = "round"
                try:
                    if conn is None and self.conninfo is not None:
                        doing = "connect"
                        conn = self.connect(self.conninfo, **self.connect_options)
                        if conn is None:
                            break  # stopped while connecting
                        if self.listen is not None:
                            conn.execute(self.listen)
                        doing = "round"
                    wait = self.round(conn)
                    self._worked()
                    doing = "wait"
                    self._wait(conn, wait)
                except Exception as error:
                    _close(conn)
                    conn = None
                    self._wait(None, self._failed(doing, error))
        finally:
            _close(conn)

    def connect(self, conninfo: str, **options: Any) -> Connection | None:
        """A connection opened on a helper thread, so that a stop need not wait for a server that
        does not answer (a connection attempt lasts up to its `connect_timeout`); None if the
        thread was stopped first (the helper then closes whatever it gets)."""
        attempt = _Attempt(f"{self.name}-connect", conninfo, options)
        attempt.start()
        while not attempt.done.wait(STOP_CHECK):
            if self.stopping.is_set():
                attempt.abandon()
                return None
        if attempt.error is not None:
            raise attempt.error
        return attempt.conn

    def _wait(self, conn: Connection | None, seconds: float) -> None:
        """Wait `seconds`, ended early by a stop, or by a NOTIFY when the thread listens."""
        if conn is None or self.listen is None:
            self.stopping.wait(max(seconds, 0))
            return
        deadline = time.monotonic() + seconds
        while True:  # at least once: a NOTIFY that came meanwhile ends even a wait of 0
            remaining = max(deadline - time.monotonic(), 0)
            if list(conn.notifies(timeout=min(remaining, STOP_CHECK), stop_after=1)):
                return
            if remaining <= STOP_CHECK or self.stopping.is_set():
                return

    def _failed(self, doing: str, error: Exception) -> float:
        """Log a failure; how long to wait before trying again."""
        self._failures += 1
        delay, self._delay = self._delay, min(self._delay * 2, self.max_retry)
        what = {"connect": "cannot connect to the database", "round": "round failed",
                "wait": "lost its connection"}[doing]
        self.logger.warning("%s: %s; trying again in %.1f s", self.name, what, delay,
                            exc_info=self._failures == 1,
                            extra={"thread_name": self.name, "failures": self._failures,
                                   "error": f"{type(error).__name__}: {error}".strip()})
        return delay

    def _worked(self) -> None:
        if self._failures:
            self.logger.info("%s: working again after %d failures", self.name, self._failures,
                             extra={"thread_name": self.name, "failures": self._failures})
        self._failures, self._delay = 0, self.retry


class _Attempt(threading.Thread):
    """One connection attempt, on a thread of its own (see `Background.connect`)."""

    def __init__(self, name: str, conninfo: str, options: dict[str, Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.conninfo, self.options = conninfo, options
        self.done = threading.Event()
        self.conn: Connection | None = None
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._abandoned = False

    def run(self) -> None:
        try:
            conn = psycopg.connect(self.conninfo, **self.options)
        except Exception as error:
            self.error = error
        else:
            with self._lock:
                if self._abandoned:
                    conn.close()
                else:
                    self.conn = conn
        self.done.set()

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


def _close(conn: Connection | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # closing a broken connection: nothing more to do
            pass
