"""Connection pools (sync for the workers and the core, async for the API's send path), and
one-statement reads on them. Every connection is in autocommit; reconnection after an outage
is kept within a second of the database's return."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

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
