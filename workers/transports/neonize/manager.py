"""The session manager: the worker thread that holds the WhatsApp sessions of this process.

It runs in every worker; the Go library is loaded only once a `neonize` instance exists.

One worker process at a time holds them (a session-level advisory lock; if that worker dies its
connection closes and another worker takes over at its next check). The manager keeps one
`Session` per `neonize` instance, in step with the `instances` table, records every state change,
and runs the commands the API leaves in `instance_commands` (pair code, logout, restart).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

from service.core import Coordinator
from service.settings import Settings
from workers.transports.neonize.store import device_exists, init_store

if TYPE_CHECKING:
    from workers.transports.neonize.sessions import Session

logger = logging.getLogger("wmq.whatsapp")

OWNER_LOCK = "SELECT pg_try_advisory_lock(hashtext('wmq.whatsapp-sessions')) AS owner"
NEONIZE_INSTANCES = "SELECT id, whatsapp_jid FROM instances WHERE transport = 'neonize'"
TAKE_COMMANDS = """
    SELECT id, instance_id, command, args FROM instance_commands
     WHERE done_at IS NULL AND instance_id = ANY(%(mine)s)
     ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED
"""
FINISH_COMMAND = """
    UPDATE instance_commands SET done_at = now(), result = %(result)s, error = %(error)s WHERE id = %(id)s
"""


class SessionManager(threading.Thread):
    def __init__(self, coordinator: Coordinator, settings: Settings, database_url: str, worker_id: UUID,
                 interval: float = 1.0, on_ownership: Callable[[bool], None] | None = None) -> None:
        super().__init__(name="wmq-whatsapp-sessions", daemon=True)
        self.coordinator = coordinator
        self.settings = settings
        self.database_url = database_url
        self.worker_id = worker_id
        self.interval = interval
        self.on_ownership = on_ownership or (lambda owner: None)
        self.sessions: dict[UUID, Session] = {}
        self.owner = False
        self._stopping = threading.Event()
        self._store_url: str | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None

    def get(self, instance_id: UUID) -> Session | None:
        return self.sessions.get(instance_id)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    owner = self._own()
                except Exception:
                    logger.exception("lost the whatsapp sessions lock")
                    self._drop_lock(lost=True)
                    owner = False
                if owner:
                    try:
                        self._sync()
                        self._run_commands()
                    except Exception:  # a passing database error: keep the sessions, try again
                        logger.exception("whatsapp session upkeep failed")
                self._stopping.wait(self.interval)
        finally:
            self._drop_lock(lost=False)

    def _own(self) -> bool:
        if self._lock_conn is None or self._lock_conn.closed:
            self.owner = False
            # Keepalives: a lock connection lost to a network failure must be noticed, or two
            # processes could end up holding the same sessions.
            self._lock_conn = psycopg.connect(self.database_url, autocommit=True, row_factory=dict_row,
                                              keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                              keepalives_count=2, connect_timeout=10)
        if not self.owner:
            row = self._lock_conn.execute(OWNER_LOCK).fetchone()
            self.owner = bool(row and row["owner"])
            if self.owner:
                logger.info("this worker holds the whatsapp sessions", extra={"worker_id": str(self.worker_id)})
                self.on_ownership(True)
        else:
            self._lock_conn.execute("SELECT 1")  # notice a lost connection (and so a lost lock)
        return self.owner

    def _drop_lock(self, *, lost: bool) -> None:
        """Give the sessions up. After a lost lock another worker may hold them already, so
        nothing more is recorded; on a clean stop their last state is."""
        was_owner = self.owner
        if lost:
            self.owner = False
        if was_owner:
            self.on_ownership(False)
            sessions, self.sessions = list(self.sessions.values()), {}
            stoppers = [threading.Thread(target=s.stop, daemon=True) for s in sessions]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join(timeout=10)
        self.owner = False
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()
            except Exception:
                pass
        self._lock_conn = None

    def _sync(self) -> None:
        """A session for every neonize instance; none for removed ones."""
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            rows = {r["id"]: r["whatsapp_jid"] for r in conn.execute(NEONIZE_INSTANCES)}
        if rows and self._store_url is None:
            self._store_url = init_store(self.database_url, self.settings.whatsapp_store_schema)
        if rows:
            from workers.transports.neonize.sessions import Session  # loads the Go library
        for instance_id, jid in rows.items():
            if instance_id not in self.sessions:
                session = Session(instance_id, self._store_url or "", jid, self._record,
                                  proxy=self.settings.whatsapp_proxy,
                                  max_backoff=self.settings.whatsapp_reconnect_max_backoff,
                                  device_exists=self._device_exists)
                self.sessions[instance_id] = session
                session.start()
                self._stopping.wait(0.1)  # staggered: neonize's Go registry is not thread-safe
        for instance_id in set(self.sessions) - set(rows):
            self.sessions.pop(instance_id).stop()

    def _device_exists(self, jid: str) -> bool:
        return device_exists(self.database_url, self.settings.whatsapp_store_schema, jid)

    def _record(self, instance_id: UUID, state: str, detail: str | None, extra: dict[str, Any]) -> None:
        if not self.owner:  # a process that lost the sessions must not overwrite the holder's record
            return
        self.coordinator.record_whatsapp_state(instance_id, state, detail, self.worker_id, **extra)

    def _run_commands(self) -> None:
        if not self.sessions:
            return
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            for command in conn.execute(TAKE_COMMANDS, {"mine": list(self.sessions)}).fetchall():
                result, error = None, None
                try:
                    result = self._execute(command["instance_id"], command["command"], command["args"])
                except Exception as exc:
                    error = str(exc) or type(exc).__name__
                conn.execute(FINISH_COMMAND, {"id": command["id"], "error": error,
                                              "result": psycopg.types.json.Jsonb(result)})

    def _execute(self, instance_id: UUID, command: str, args: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions[instance_id]
        if command == "pair_phone":
            return {"code": session.pair_phone(args["phone"])}
        if command == "logout":
            session.logout()
            return {"state": session.state}
        if command == "restart":
            session.restart()
            return {"state": "restarting"}
        raise ValueError(f"unknown command {command}")

    def stop(self) -> None:
        """Stop the loop; it gives the sessions and the lock up on its way out."""
        self._stopping.set()
        self.join(timeout=30)
