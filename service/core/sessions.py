"""WhatsApp sessions as the core sees them: each worker's round of session leases (which
instances' sessions it owns: service/sql/functions/25_leases.sql), what an owner records, and the
commands the API leaves for a session's owner (pair code, logout, restart).

The worker side (workers/leases.py, workers/transports/neonize/manager.py) reaches these through
`SessionHost`, wired in workers/main.py; it imports nothing from the core.
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
    """What a worker holding WhatsApp sessions needs from the core: its session leases (one
    round at a time, `lease_round`, run by workers/leases.py) and the records of its sessions."""

    def __init__(self, core: Core, database_url: str, worker_id: UUID) -> None:
        self.core = core
        self.database_url = database_url
        self.worker_id = worker_id
        self._last_round: float | None = None

    # -- the leases -----------------------------------------------------------------------------

    def lease_round(self, *, judge: bool, acquire: bool = True, stopping: bool = False) -> dict[UUID, str]:
        """Renew this worker's leases, give up what exceeds its share (everything when
        `stopping`), take free ones (expired ones too if `judge`) unless not `acquire`; the
        instances it owns now."""
        settings = self.core.settings
        self.core.one(queries.RENEW_LEASES, worker_id=self.worker_id, ttl_s=settings.message_queue_heartbeat_ttl)
        rows = self.core.all(queries.LEASE_ROUND, worker_id=self.worker_id, ttl_s=settings.message_queue_heartbeat_ttl,
                             heartbeat_ttl_s=settings.message_queue_heartbeat_ttl, judge=judge,
                             resend=settings.message_queue_resend_uncertain, acquire=acquire, stopping=stopping,
                             queue=self.core.route.queue, actor=self.core.route.actor)
        self._last_round = time.monotonic()
        return {r["instance_id"]: r["transport"] for r in rows}

    def hold(self) -> bool:
        """Whether this worker's leases are current: its last round is younger than half the
        TTL (older, and its leases may be expiring: its sessions must not act on their own)."""
        last = self._last_round
        return last is not None and time.monotonic() - last < self.core.settings.message_queue_heartbeat_ttl / 2

    # -- what the holder reads and records ------------------------------------------------------

    def instances(self, transport: str) -> dict[UUID, str | None]:
        """The instances of `transport` whose session this worker owns, with their WhatsApp ids."""
        rows = self.core.all(queries.SESSION_INSTANCES, transport=transport, worker_id=self.worker_id)
        return {r["id"]: r["whatsapp_jid"] for r in rows}

    def record(self, instance_id: UUID, state: str, detail: str | None, **extra: Any) -> None:
        """A session's state change: the QR code or WhatsApp id it brought, and the connection
        state (on `connected` a waiting head goes at once)."""
        row = self.core.one(queries.RECORD_WHATSAPP, instance_id=instance_id, state=state,
                            has_qr="qr" in extra, qr=extra.get("qr"), has_jid="jid" in extra, jid=extra.get("jid"),
                            worker_id=self.worker_id)
        if row is None:  # no longer this worker's session (its lease moved): record nothing
            return
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
