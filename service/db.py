"""Database plumbing: the connection pool, the embedded PostgreSQL, and the migrations runner
(`service/sql/migrations/`, then the definitions of `service/sql/functions/`)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent / "sql"
#: Arbitrary constant: the advisory lock that serialises migrations across processes.
MIGRATION_LOCK_ID = 7_311_002_001


# psycopg_pool waits 1 s, then doubles the wait between reconnection attempts without bound
# (1, 2, 4, 8 s…): after a 20 s outage a process came back up to 12 s after the database did,
# long after its peers (issue 11). A steady half second keeps every process within a second of it.
AttemptWithBackoff.INITIAL_DELAY = 0.5
AttemptWithBackoff.DELAY_BACKOFF = 1.0


def make_pool(url: str, *, max_size: int, name: str = "wmq", timeout: float = 30.0) -> ConnectionPool:
    """A pool of plain connections (tuple rows: the broker shares it), opened before returning.

    Connections are in autocommit: every core operation is one statement (a SQL function, atomic
    by itself), which saves the BEGIN and COMMIT round trips; multi-statement work opens
    `conn.transaction()` explicitly, as the broker does."""
    pool = ConnectionPool(url, check=_ready, **_pool_options(max_size, name, timeout))
    pool.open(wait=True, timeout=30)
    return pool


async def make_async_pool(url: str, *, max_size: int, name: str = "wmq", timeout: float = 30.0
                          ) -> AsyncConnectionPool:
    """The same pool for the API's event loop: its send path enqueues without a thread hop."""
    pool = AsyncConnectionPool(url, check=_ready_async, **_pool_options(max_size, name, timeout))
    await pool.open(wait=True, timeout=30)
    return pool


def _pool_options(max_size: int, name: str, timeout: float) -> dict[str, Any]:
    """`timeout`: the longest a caller waits for a connection (then PoolTimeout)."""
    return {"min_size": 1, "max_size": max_size, "timeout": timeout, "open": False,
            "kwargs": {"application_name": name, "autocommit": True, "connect_timeout": 5}}


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
    """The numbered table migrations, in order. Applied once each, never edited once applied."""
    return sorted((SQL_DIR / "migrations").glob("[0-9][0-9][0-9]_*.sql"))


def definition_files() -> list[Path]:
    """The current text of every function, trigger and view, in the order they are applied."""
    return sorted((SQL_DIR / "functions").glob("*.sql"))


def definitions_checksums() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in definition_files()}


#: The names the service owns in schema `public`: functions `wmq_*` (and the seed's
#: `get_next_message_sequence`), views `v_*`, and the triggers that call those functions. Before
#: the definitions are applied anew all of them go, so a renamed or removed one leaves nothing
#: behind and an upgraded database ends up exactly like a new one (tests/fast/test_migrations.py).
#: Anything else in `public` (an extension's functions, an operator's own views) is left alone.
_DROP_DEFINITIONS = """
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::regclass AS name FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v' AND c.relname LIKE 'v\\_%'
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') LOOP
        EXECUTE format('DROP VIEW %s', r.name);
    END LOOP;
    FOR r IN SELECT t.tgname, t.tgrelid::regclass AS rel FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
              WHERE NOT t.tgisinternal AND p.pronamespace = 'public'::regnamespace
                AND (p.proname LIKE 'wmq\\_%' OR p.proname = 'get_next_message_sequence') LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.rel);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
              WHERE p.pronamespace = 'public'::regnamespace
                AND (p.proname LIKE 'wmq\\_%' OR p.proname = 'get_next_message_sequence')
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') LOOP
        EXECUTE format('DROP FUNCTION %s', r.name);
    END LOOP;
END
$$;
"""

#: The definitions' version (service/sql/functions/VERSION): raised with every change to service/sql/functions/.
#: A process never applies definitions older than the ones the database holds: during a rolling
#: update an old pod that restarts must not put old functions back under the new pods.
VERSION_ROW = "VERSION"


def definitions_version() -> int:
    return int((SQL_DIR / "functions" / "VERSION").read_text().split()[0])


def migrate(url: str) -> list[str]:
    """Bring the database up to date; returns what this call applied.

    First the pending `service/sql/migrations/NNN_*.sql` (tables), each in its own transaction, in order;
    then, if any file of `service/sql/functions/` changed since it was last applied (a checksum per
    file), every definition anew in one transaction (Flyway's "repeatable" migrations). Whichever
    process comes first does it under an advisory lock; the others wait and then find nothing
    left to do.
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
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_definitions ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
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
                logger.debug("migration applied", extra={"migration": path.name})
            stored = _stored_version(conn)
            if stored is not None and stored > definitions_version():
                logger.warning("the database holds newer definitions than this process; left as they are",
                               extra={"stored_version": stored, "own_version": definitions_version()})
            elif _definitions_changed(conn):
                with conn.transaction():
                    conn.execute(_DROP_DEFINITIONS)
                    conn.execute("DELETE FROM schema_definitions")
                    for path, checksum in zip(definition_files(), definitions_checksums().values(), strict=True):
                        conn.execute(path.read_text())
                        conn.execute("INSERT INTO schema_definitions (name, checksum) VALUES (%s, %s)",
                                     (path.name, checksum))
                    conn.execute("INSERT INTO schema_definitions (name, checksum) VALUES (%s, %s)",
                                 (VERSION_ROW, str(definitions_version())))
                applied.append("functions/")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    if applied:  # one line for a fresh database's dozen migrations
        logger.info("schema brought up to date", extra={"applied": ",".join(applied)})
    return applied


def _stored_definitions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('schema_definitions') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        return {}
    return {str(name): str(checksum) for name, checksum in
            conn.execute("SELECT name, checksum FROM schema_definitions").fetchall()}


def _stored_version(conn: psycopg.Connection[Any]) -> int | None:
    version = _stored_definitions(conn).get(VERSION_ROW)
    return None if version is None else int(version)


def _definitions_changed(conn: psycopg.Connection[Any]) -> bool:
    stored = _stored_definitions(conn)
    stored.pop(VERSION_ROW, None)
    return stored != definitions_checksums()


def pending_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Names of migrations not yet applied, and `functions/` if a definition changed (empty when
    the schema is current)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done: set[int] = set()
    if exists and exists[0]:
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    pending = [p.name for p in migration_files() if int(p.name[:3]) not in done]
    stored = _stored_version(conn)
    newer_stored = stored is not None and stored > definitions_version()
    return pending + (["functions/"] if _definitions_changed(conn) and not newer_stored else [])
