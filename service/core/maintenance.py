"""The maintenance leader's tasks (service/sql/functions/60_maintenance.sql), each run on a connection
whose transaction holds the maintenance lock (workers/maintenance/loop.py takes it)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from service.core import queries
from service.core.context import Core
from service.core.enqueue import IDEMPOTENCY_TTL

Connection = psycopg.Connection[Any]


def try_lead(conn: Connection) -> bool:
    """Take the maintenance lock for this transaction; False if another process holds it."""
    row = conn.execute(queries.MAINTENANCE_LOCK).fetchone()
    return bool(row and row[0])


def _rows(conn: Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def release_dead_sessions(core: Core, conn: Connection) -> list[dict[str, Any]]:
    """Instances whose session holder died are no longer connected."""
    return _rows(conn, queries.RELEASE_DEAD_SESSIONS, ttl_s=core.settings.message_queue_heartbeat_ttl)


def rescue(core: Core, conn: Connection, *, judge: bool) -> list[dict[str, Any]]:
    """I5: recover `running`/`sending` messages whose worker's heartbeat expired, if this process
    may judge (`judge`: it has had continuous database access for longer than the TTL), and
    those whose broker message a live worker gave up on."""
    return _rows(conn, queries.RESCUE, ttl_s=core.settings.message_queue_heartbeat_ttl,
                 resend=core.settings.message_queue_resend_uncertain, judge=judge, **core.route.params())


def redispatch_orphans(core: Core, conn: Connection) -> list[dict[str, Any]]:
    """Dispatch again the heads that have no broker message."""
    return _rows(conn, queries.REDISPATCH_ORPHANS, **core.route.params())


def purge_idempotency_keys(core: Core, conn: Connection, batch: int = 10_000) -> int:
    """Delete idempotency keys past their time to live; how many went."""
    return int(_rows(conn, queries.PURGE_IDEMPOTENCY_KEYS, ttl=IDEMPOTENCY_TTL, batch=batch)[0]["purged"])


def purge_webhook_deliveries(core: Core, conn: Connection, batch: int = 10_000) -> int:
    """Delete webhook deliveries finished (delivered or given up) before the retention period."""
    rows = _rows(conn, queries.PURGE_WEBHOOK_DELIVERIES, retention_s=core.settings.message_queue_retention_period,
                 batch=batch)
    return int(rows[0]["purged"])


def purge_finished(core: Core, conn: Connection, batch: int = 10_000) -> int:
    """Delete finished messages older than MESSAGE_QUEUE_RETENTION_PERIOD; how many went."""
    rows = _rows(conn, queries.PURGE_FINISHED, retention_s=core.settings.message_queue_retention_period, batch=batch)
    return int(rows[0]["purged"])
