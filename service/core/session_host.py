"""The worker's side of WhatsApp sessions, as the core sees it: each worker's round of session
leases (which instances' sessions it owns: service/sql/functions/25_leases.sql), what an owner
records, and the commands the API left for it (service/core/session_commands.py leaves them).

The worker side (workers/leases.py, workers/transports/neonize/manager.py) reaches these through
`SessionHost`, wired in workers/main.py; the transports import nothing from the core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.core import control, queries
from service.core.context import Core
from service.core.receipts import record_receipt

logger = logging.getLogger("wmq.core")

Execute = Callable[[UUID, str, dict[str, Any]], dict[str, Any]]


class SessionHost:
    """What a worker holding WhatsApp sessions needs from the core: its session leases (one
    round at a time, `lease_round`, run by workers/leases.py) and the records of its sessions."""

    def __init__(self, core: Core, worker_id: UUID) -> None:
        self.core = core
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

    def lease_fence(self, instance_id: UUID) -> int | None:
        """The fence of the instance's lease while this worker holds it, else None: a session
        compares it with the fence it started under before every connect."""
        row = self.core.one(queries.LEASE_FENCE, instance_id=instance_id, worker_id=self.worker_id)
        return None if row is None else int(row["fence"])

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
