"""The migrations runner: the numbered table migrations of `service/sql/migrations/`, then
the one current text of every function and view (`service/sql/functions/`), re-applied when it
changes, under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
#: Arbitrary constant: the advisory lock that serialises migrations across processes.
MIGRATION_LOCK_ID = 7_311_002_001


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
