"""Fixtures that start real things: PostgreSQL, the API under uvicorn, worker processes.

PostgreSQL is `TEST_DATABASE_URL` when set, else an embedded server (pgserver) for the session.
Each test gets a fresh database cloned from a migrated template, and its own processes, so
tests cannot see each other's messages or workers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from service.db.migrations import migrate
from tests.stack import Stack
from tests.webhook_receiver import Receiver

TEMPLATE = "wmq_test_template"

# What runs in the test process itself (media fetched by a transport under test) may reach the
# tests' own listeners on 127.0.0.1, as the stacks' processes may (tests/stack.py TEST_ENV).
os.environ.setdefault("OUTBOUND_ALLOW", "127.0.0.1")


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of the PostgreSQL server the tests may create databases on."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    from service.db.embedded import start_embedded_postgres

    server = start_embedded_postgres(tmp_path_factory.mktemp("embedded"))
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def template_url(admin_url: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    url = make_conninfo(admin_url, dbname=TEMPLATE)
    migrate(url)
    return url


@pytest.fixture
def database_url(admin_url: str, template_url: str) -> str:
    """A fresh, migrated database for this test."""
    name = f"wmq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE))
        )
    return make_conninfo(admin_url, dbname=name)


@pytest.fixture
def empty_database(admin_url: str) -> str:
    """A fresh database with nothing in it, not even the migrations."""
    name = f"wmq_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(admin_url, dbname=name)


@pytest.fixture
def make_stack(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """`make_stack(workers=1, threads=4, **env)` → a running Stack on this test's database."""
    stacks: list[Stack] = []

    def make(*, workers: int = 1, **env: Any) -> Stack:
        stack = Stack(database_url, tmp_path / f"stack{len(stacks)}", env)
        stacks.append(stack)
        stack.start(workers=workers)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    """API + one worker (4 threads) with zero jitter."""
    return make_stack()  # type: ignore[no-any-return]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served = Receiver()
    yield served
    served.server.shutdown()
