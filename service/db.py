"""Database plumbing: the connection pool, the embedded PostgreSQL, and the migrations runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
#: Arbitrary constant: the advisory lock that serialises migrations across processes.
MIGRATION_LOCK_ID = 7_311_002_001


def make_pool(url: str, *, max_size: int, name: str = "wmq") -> ConnectionPool:
    """A pool of plain connections (tuple rows: the broker shares it), opened before returning.

    Connections are in autocommit: every core operation is one statement (a SQL function, atomic
    by itself), which saves the BEGIN and COMMIT round trips; multi-statement work opens
    `conn.transaction()` explicitly, as the broker does."""
    pool = ConnectionPool(url, check=_ready, **_pool_options(max_size, name))
    pool.open(wait=True, timeout=30)
    return pool


async def make_async_pool(url: str, *, max_size: int, name: str = "wmq") -> AsyncConnectionPool:
    """The same pool for the API's event loop: its send path enqueues without a thread hop."""
    pool = AsyncConnectionPool(url, check=_ready_async, **_pool_options(max_size, name))
    await pool.open(wait=True, timeout=30)
    return pool


def _pool_options(max_size: int, name: str) -> dict[str, Any]:
    return {"min_size": 1, "max_size": max_size, "kwargs": {"application_name": name, "autocommit": True},
            "open": False}


async def _ready_async(conn: psycopg.AsyncConnection[Any]) -> None:
    _alive(conn)


def _ready(conn: psycopg.Connection[Any]) -> None:
    """The pool's check before lending a connection, inline and without a round trip.

    It reads what the server sent, as the broker checks its own connections: a connection the
    server closed (a restart, `pg_terminate_backend`) raises here and is replaced. It also puts
    the connection back in autocommit, which the broker's LISTEN helper turns off. (The pool's
    `check_connection` costs a round trip per borrow, a sixth of the worker's time under load;
    a `reset` callback hands every returned connection to the pool's thread.)"""
    _alive(conn)
    if not conn.autocommit:
        conn.autocommit = True


def _alive(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    for _ in range(2):  # the first read may take the server's goodbye, the second its EOF
        conn.pgconn.consume_input()
    if conn.pgconn.status != pq.ConnStatus.OK:
        raise psycopg.OperationalError("connection lost")


def fetch_one(pool: ConnectionPool, sql: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run one statement in its own transaction; the first row as a dict."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchone()


async def fetch_one_async(pool: AsyncConnectionPool, sql: str,
                          params: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """`fetch_one` on the event loop."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchone()


def fetch_all(pool: ConnectionPool, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run one statement in its own transaction; every row as a dict."""
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def start_embedded_postgres(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL under `data_dir/pg` and return its handle.

    The server stops when the last process holding a handle exits.
    """
    import pgserver

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(pgdata, cleanup_mode="stop")


def migration_files() -> list[Path]:
    return sorted(SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def migrate(url: str) -> list[str]:
    """Apply the pending `sql/NNN_*.sql` files, each in its own transaction, in order.

    Whichever process comes first applies them under an advisory lock; the others wait and then
    find nothing left to do. Returns the names applied by this call.
    """
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in migration_files():
                version = int(path.name[:3])
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, path.name),
                    )
                applied.append(path.name)
                logger.info("migration applied", extra={"migration": path.name})
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied


def pending_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Names of migrations not yet applied (empty when the schema is current)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done: set[int] = set()
    if exists and exists[0]:
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    return [p.name for p in migration_files() if int(p.name[:3]) not in done]
