"""The session manager: the worker thread that holds the WhatsApp sessions of this process.

It runs in every worker; the Go library is loaded only once a `neonize` instance exists.

Each worker holds the sessions of the instances whose leases it owns (workers/leases.py: a fair
share per live worker; a dead or frozen worker's leases go to the others after the TTL). The
manager keeps one `Session` per owned instance of its transport (stopping those it no longer
owns), records every state change, and runs the commands the API leaves (pair code, logout,
restart), all through the `SessionHost` it is given.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from service.settings import Settings
from workers.background import Background, Connection
from workers.transports.base import SessionHost
from workers.transports.neonize import IMPORT_LOCK, bottag
from workers.transports.neonize.store import Store, StoreError, init_store

if TYPE_CHECKING:
    from workers.transports.neonize.sessions import Session

logger = logging.getLogger("wmq.whatsapp")


class SessionManager(Background):
    """Every `interval`: checks this worker's leases, keeps its sessions, runs the API's commands.
    A failed check or upkeep is logged by the loop (workers/background.py) and tried again after
    `interval`; a lost lock also gives the sessions up at once."""

    def __init__(self, host: SessionHost, settings: Settings, database_url: str, *, transport: str,
                 interval: float = 1.0) -> None:
        # stop_timeout: the sessions are stopped on the way out (`_drop_lock`, up to 10 s each, in parallel)
        super().__init__("wmq-whatsapp-sessions", logger=logger, retry=interval, max_retry=interval,
                         stop_timeout=30)
        self.host = host
        self.settings = settings
        self.database_url = database_url
        self.transport = transport
        self.interval = interval
        self.sessions: dict[UUID, Session] = {}
        self.owner = False
        self._store: Store | None = None
        self._store_error: str | None = None

    def get(self, instance_id: UUID) -> Session | None:
        return self.sessions.get(instance_id)

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """The loop; on its way out (`stop()`) it gives the sessions and the lock up."""
        try:
            super().run()
        finally:
            self._drop_lock(lost=False)

    def round(self, conn: Connection | None) -> float:
        try:
            owner = self._own()
        except Exception:  # the lock is lost: another worker may hold the sessions already
            if self.owner:
                logger.warning("lost the whatsapp sessions lock: giving this worker's sessions up")
            self._drop_lock(lost=True)
            raise  # logged by the loop, which checks again after `interval`
        if owner:  # a failure here (a passing database error) keeps the sessions: the loop tries again
            self._sync()
            self._run_commands()
        return self.interval

    def _own(self) -> bool:
        was_owner, self.owner = self.owner, self.host.hold()
        if self.owner and not was_owner:
            logger.info("this worker's session leases are current: holding its whatsapp sessions")
        return self.owner

    def _drop_lock(self, *, lost: bool) -> None:
        """Give the sessions up. After a lost lock another worker may hold them already, so
        nothing more is recorded; on a clean stop their last state is."""
        was_owner = self.owner
        if lost:
            self.owner = False
        if was_owner:
            sessions, self.sessions = list(self.sessions.values()), {}
            stoppers = [threading.Thread(target=s.stop, daemon=True) for s in sessions]
            for stopper in stoppers:
                stopper.start()
            for stopper in stoppers:
                stopper.join(timeout=10)
        self.owner = False

    def _sync(self) -> None:
        """A session for every instance of this transport; none for removed ones."""
        rows = self.host.instances(self.transport)
        for instance_id in set(self.sessions) - set(rows):
            self.sessions.pop(instance_id).stop()
        for instance_id in [i for i, s in self.sessions.items() if s.ended]:
            self.sessions.pop(instance_id)  # its lease moved; a new session if it comes back
        if not rows or (self._store is None and not self._open_store(rows)):
            return  # the Go library is loaded only once an instance needs it
        from workers.transports.neonize.sessions import Session  # loaded by _open_store, under its lock

        assert self._store is not None
        for instance_id, jid in rows.items():
            if instance_id not in self.sessions:
                fence = self.host.lease_fence(instance_id)
                if fence is None:
                    continue  # the lease moved since `instances`
                session = Session(instance_id, self._store, jid, self._record, may_connect=self._lease_check(
                                      instance_id, fence),
                                  proxy=self.settings.whatsapp_proxy,
                                  max_backoff=self.settings.whatsapp_reconnect_max_backoff,
                                  pairing_deadline=self.settings.whatsapp_pairing_timeout,
                                  on_receipt=self._receipt,
                                  announce_available=self.settings.whatsapp_announce_available)
                self.sessions[instance_id] = session
                session.start()

    def _lease_check(self, instance_id: UUID, fence: int) -> Callable[[], bool]:
        """Asked by the session before each connect: this worker still holds the instance's lease,
        with the fence its session started under (another worker took it over meanwhile if not)."""
        return lambda: self.owner and self.host.lease_fence(instance_id) == fence

    def _open_store(self, rows: dict[UUID, str | None]) -> bool:
        """Load the Go library and create the store's tables; a store that cannot be used is every
        instance's state (and is tried again at the next check)."""
        schema = self.settings.whatsapp_store_schema
        try:
            with IMPORT_LOCK:
                init_store(self.database_url, schema)
                from workers.transports.neonize.sessions import Session  # noqa: F401 - loads the Go library
        except StoreError as error:
            if str(error) != self._store_error:
                logger.error("the WhatsApp session store cannot be used", extra={"detail": str(error)})
                self._store_error = str(error)
            for instance_id in rows:
                self._record(instance_id, "store_error", str(error), {})
            return False
        self._store, self._store_error = Store(self.database_url, schema), None
        from workers.transports.neonize.gate import GATE

        GATE.proxy = self.settings.whatsapp_proxy  # the gate dials WhatsApp through it
        bottag.refusal()  # says now, in the log, if this worker's one-to-one messages will wait
        return True

    def _record(self, instance_id: UUID, state: str, detail: str | None, extra: dict[str, Any]) -> None:
        if not self.owner:  # a process that lost the sessions must not overwrite the holder's record
            return
        self.host.record(instance_id, state, detail, **extra)

    def _receipt(self, instance_id: UUID, message_ids: list[str], kind: str, at: Any) -> None:
        if self.owner:
            self.host.receipt(instance_id, message_ids, kind, at)

    def _run_commands(self) -> None:
        self.host.run_commands(list(self.sessions), self._execute)

    def _execute(self, instance_id: UUID, command: str, args: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions[instance_id]
        if command == "pair":
            session.pair()
            return {"state": session.state}
        if command == "pair_phone":
            return {"code": session.pair(args["phone"], wait=max(self.settings.whatsapp_command_timeout - 2, 1))}
        if command == "logout":
            session.logout()
            return {"state": session.state}
        if command == "restart":
            session.restart()
            return {"state": "restarting"}
        if command == "unrestrict":
            session.lift_restriction()
            return {"state": session.state}
        raise ValueError(f"unknown command {command}")

