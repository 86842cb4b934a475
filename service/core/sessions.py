"""WhatsApp sessions as the core sees them: which instances need one, what their holder records,
the commands the API leaves for the holder (pair code, logout, restart), and the lock that makes
one worker process the holder.

The worker side (workers/transports/neonize/manager.py) reaches these through `SessionHost`,
wired in workers/main.py; it imports nothing from the core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.core import control, queries, reads
from service.core.context import Core
from service.core.errors import InstanceNotFound, SessionCommandFailed

logger = logging.getLogger("wmq.core")

Execute = Callable[[UUID, str, dict[str, Any]], dict[str, Any]]


def ask(core: Core, instance_id: UUID, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask the worker holding the instance's session to act, and wait for its answer (the API's
    side of `instance_commands`)."""
    try:
        row = core.one(queries.INSERT_COMMAND, instance_id=instance_id, command=command, args=Jsonb(args or {}))
    except psycopg.errors.ForeignKeyViolation:  # removed meanwhile
        raise InstanceNotFound("instance not found") from None
    assert row is not None
    deadline = time.monotonic() + core.settings.whatsapp_command_timeout
    while time.monotonic() < deadline:
        done = core.one(queries.COMMAND_RESULT, id=row["id"])
        if done and done["done_at"]:
            if done["error"]:
                raise SessionCommandFailed(done["error"])
            return dict(done["result"] or {})
        time.sleep(0.1)
    core.one(queries.CANCEL_COMMAND, id=row["id"])
    raise SessionCommandFailed("no worker holding this WhatsApp session answered in time")


def record_receipt(core: Core, instance_id: UUID, message_ids: list[str], kind: str,
                   at: datetime | None = None) -> int:
    """WhatsApp's receipt (`delivered`, `read`, `played`) for messages the instance sent; how many
    messages moved (each keeps the first of each kind)."""
    row = core.one(queries.RECORD_RECEIPT, instance_id=instance_id, ids=message_ids, kind=kind,
                   at=at or datetime.now(UTC))
    return int(row["moved"]) if row else 0


def request_qr(core: Core, instance_id: UUID) -> dict[str, Any]:
    """The instance's QR code: pairing starts only when someone asks (a pairing attempt runs
    about 160 s, in the worker holding the session). Waits for the first code of a new attempt."""
    status = reads.connection(core, instance_id)
    if status["owner_alive"] and status["connection_state"] == "qr" and status["qr_code"]:
        return status
    ask(core, instance_id, "pair")
    deadline = time.monotonic() + core.settings.whatsapp_command_timeout
    while time.monotonic() < deadline:
        status = reads.connection(core, instance_id)
        if status["connection_state"] == "qr" and status["qr_code"]:
            return status
        if status["connection_state"] != "pairing":  # the attempt ended: the detail says why
            raise SessionCommandFailed(status["connection_detail"] or f"pairing ended: {status['connection_state']}")
        time.sleep(0.2)
    raise SessionCommandFailed("no QR code yet: WhatsApp has not answered the pairing attempt; try again shortly")


class SessionHost:
    """What the process holding WhatsApp sessions needs from the core."""

    def __init__(self, core: Core, database_url: str, worker_id: UUID) -> None:
        self.core = core
        self.database_url = database_url
        self.worker_id = worker_id
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._held = False

    # -- the holder's lock ----------------------------------------------------------------------

    def hold(self) -> bool:
        """Take or keep the sessions lock (a session-level advisory lock on a connection of its
        own); False while another process holds it. Raises when the connection, and with it the
        lock, is lost."""
        if self._lock_conn is None or self._lock_conn.closed:
            # Keepalives: a lock connection lost to a network failure must be noticed, or two
            # processes could end up holding the same sessions.
            self._lock_conn = psycopg.connect(self.database_url, autocommit=True, keepalives=1, keepalives_idle=5,
                                              keepalives_interval=2, keepalives_count=2, connect_timeout=10)
            self._held = False
        if not self._held:
            row = self._lock_conn.execute(queries.SESSIONS_LOCK).fetchone()
            self._held = bool(row and row[0])
        else:
            self._lock_conn.execute("SELECT 1")  # notice a lost connection (and so a lost lock)
        return self._held

    def release(self) -> None:
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()
            except Exception:
                pass
        self._lock_conn = None
        self._held = False

    # -- what the holder reads and records ------------------------------------------------------

    def instances(self, transport: str) -> dict[UUID, str | None]:
        """Every instance of `transport`, with its WhatsApp id when paired."""
        return {r["id"]: r["whatsapp_jid"] for r in self.core.all(queries.SESSION_INSTANCES, transport=transport)}

    def record(self, instance_id: UUID, state: str, detail: str | None, **extra: Any) -> None:
        """A session's state change: the QR code or WhatsApp id it brought, and the connection
        state (on `connected` a waiting head goes at once)."""
        self.core.one(queries.RECORD_WHATSAPP, instance_id=instance_id, state=state,
                      has_qr="qr" in extra, qr=extra.get("qr"), has_jid="jid" in extra, jid=extra.get("jid"),
                      worker_id=self.worker_id)
        control.set_connection(self.core, instance_id, state, detail)

    def receipt(self, instance_id: UUID, message_ids: list[str], kind: str, at: datetime) -> int:
        """WhatsApp's receipt for messages this instance sent: `delivered`, `read` or `played`."""
        return record_receipt(self.core, instance_id, message_ids, kind, at)

    def run_commands(self, instance_ids: list[UUID], execute: Execute) -> None:
        """Run the pending commands for these instances, recording each result or error."""
        if not instance_ids:
            return
        with self.core.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            for command in cur.execute(queries.TAKE_COMMANDS, {"mine": instance_ids}).fetchall():
                result, error = None, None
                try:
                    result = execute(command["instance_id"], command["command"], command["args"])
                except Exception as exc:
                    error = str(exc) or type(exc).__name__
                cur.execute(queries.FINISH_COMMAND, {"id": command["id"], "error": error, "result": Jsonb(result)})
