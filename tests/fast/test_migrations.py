"""The schema: numbered table migrations plus the one current text of every function and view
(service/sql/functions/), re-applied when it changes. An upgraded database must end up exactly like a
new one, with its messages intact and its queue still flowing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from service.db.migrations import SQL_DIR, definition_files, migrate, pending_migrations

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "database_at_v6.sql"

#: Everything that makes up a schema, as text that two databases can be compared by.
CATALOG = {
    "columns": """SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default
                    FROM information_schema.columns WHERE table_schema IN ('public', 'dramatiq')""",
    "constraints": """SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def
                        FROM pg_constraint WHERE connamespace IN ('public'::regnamespace, 'dramatiq'::regnamespace)""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname IN ('public', 'dramatiq')",
    "triggers": "SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE NOT tgisinternal",
    "functions": """SELECT p.oid::regprocedure::text AS name, pg_get_functiondef(p.oid) AS def FROM pg_proc p
                     WHERE p.pronamespace IN ('public'::regnamespace, 'dramatiq'::regnamespace)""",
    "views": """SELECT c.relname, pg_get_viewdef(c.oid) AS def FROM pg_class c
                 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'""",
    "transports": "SELECT * FROM transports",
}


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: sorted(tuple(map(str, row)) for row in conn.execute(query)) for name, query in CATALOG.items()}


def restore(url: str, dump: Path) -> None:
    """Load a pg_dump file with pgserver's psql (COPY … FROM stdin needs psql)."""
    import pgserver

    psql = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
    subprocess.run([str(psql), "-q", "-v", "ON_ERROR_STOP=1", "-X", "-f", str(dump), "-d", url],
                   check=True, capture_output=True, timeout=60)


def test_every_function_has_one_current_definition() -> None:
    """A reader finds each function, trigger and view in exactly one file of service/sql/functions/,
    and no migration defines one."""
    import re

    defined: dict[str, list[str]] = {}
    for path in definition_files():
        for name in re.findall(r"^CREATE (?:OR REPLACE )?(?:FUNCTION|VIEW|TRIGGER) (\w+)", path.read_text(), re.M):
            defined.setdefault(name, []).append(path.name)
    assert defined and all(len(files) == 1 for files in defined.values()), defined
    # Names the service owns (service/db/migrations.py drops and recreates exactly these).
    for name in defined:
        assert name.startswith(("wmq_", "v_", "messages_status_")) or name == "get_next_message_sequence", name
    for path in sorted((SQL_DIR / "migrations").glob("*.sql")):
        assert not re.search(r"CREATE (OR REPLACE )?(FUNCTION|VIEW|TRIGGER)", path.read_text()), path.name


def test_a_new_database_has_nothing_pending(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert pending_migrations(conn) == []
    assert migrate(database_url) == []  # applying again does nothing


#: What a database at version 6 (the fixture) still needs: every later migration, then the definitions.
AFTER_V6 = [p.name for p in sorted((SQL_DIR / "migrations").glob("*.sql")) if int(p.name[:3]) > 6] + ["functions/"]


def test_a_database_at_version_6_upgrades_to_exactly_the_new_schema(database_url: str, empty_database: str) -> None:
    restore(empty_database, FIXTURE)
    with psycopg.connect(empty_database, row_factory=dict_row) as conn:
        before = conn.execute("SELECT * FROM messages ORDER BY zaap_id").fetchall()
        broker_before = conn.execute("SELECT message_id, queue_name, available_at FROM dramatiq.queue"
                                     " ORDER BY message_id").fetchall()
    with psycopg.connect(empty_database) as conn:
        assert pending_migrations(conn) == AFTER_V6
    assert len(before) == 9 and len(broker_before) == 3

    assert migrate(empty_database) == AFTER_V6

    with psycopg.connect(empty_database, row_factory=dict_row) as conn:
        after = conn.execute("SELECT * FROM messages ORDER BY zaap_id").fetchall()
        assert [{k: row[k] for k in before[0]} for row in after] == before  # new columns aside
        assert conn.execute("SELECT message_id, queue_name, available_at FROM dramatiq.queue"
                            " ORDER BY message_id").fetchall() == broker_before
    with psycopg.connect(empty_database) as conn:
        assert pending_migrations(conn) == []
    assert catalog(empty_database) == catalog(database_url)


def test_a_changed_definition_is_applied_again_and_a_removed_one_dropped(empty_database: str, tmp_path: Path,
                                                                        monkeypatch: Any) -> None:
    import service.db.migrations as db

    migrate(empty_database)
    sql_dir = tmp_path / "sql"
    (sql_dir / "functions").mkdir(parents=True)
    (sql_dir / "migrations").symlink_to(SQL_DIR / "migrations")
    for path in [*definition_files(), SQL_DIR / "functions" / "VERSION"]:
        (sql_dir / "functions" / path.name).write_text(path.read_text())
    extra = sql_dir / "functions" / "99_extra.sql"
    extra.write_text("CREATE FUNCTION wmq_extra() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;")
    monkeypatch.setattr(db, "SQL_DIR", sql_dir)
    assert migrate(empty_database) == ["functions/"]
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT wmq_extra()").fetchone() == (1,)
    extra.unlink()
    assert migrate(empty_database) == ["functions/"]
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regproc('wmq_extra')").fetchone() == (None,)
        # The triggers were dropped and made again: the history still records changes.
        triggers = sorted(re.findall(r"^CREATE TRIGGER (\w+)", "".join(p.read_text() for p in definition_files()),
                                     re.M))
        made = conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname").fetchall()
        assert len(triggers) >= 5 and [t for (t,) in made if t in triggers] == triggers


def test_an_operators_own_objects_and_extensions_in_public_survive_a_new_definition(empty_database: str,
                                                                                    tmp_path: Path,
                                                                                    monkeypatch: Any) -> None:
    import service.db.migrations as db

    migrate(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # its functions live in public
        conn.execute("CREATE VIEW my_dashboard AS SELECT count(*) FROM messages")
        conn.execute("CREATE FUNCTION my_helper() RETURNS int LANGUAGE sql AS $$ SELECT 2 $$")
    sql_dir = tmp_path / "sql"
    (sql_dir / "functions").mkdir(parents=True)
    (sql_dir / "migrations").symlink_to(SQL_DIR / "migrations")
    for path in [*definition_files(), SQL_DIR / "functions" / "VERSION"]:
        (sql_dir / "functions" / path.name).write_text(path.read_text() + "\n")
    monkeypatch.setattr(db, "SQL_DIR", sql_dir)
    assert migrate(empty_database) == ["functions/"]
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT my_helper(), (SELECT count(*) FROM my_dashboard) >= 0").fetchone() == (2, True)
        assert conn.execute("SELECT '[1,2]'::vector <-> '[1,3]'::vector").fetchone() == (1.0,)


def test_a_process_never_applies_definitions_older_than_the_databases(empty_database: str) -> None:
    """During a rolling update an old pod that restarts must not put old functions back."""

    migrate(empty_database)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE schema_definitions SET checksum = '99' WHERE name = 'VERSION'")
        conn.execute("UPDATE schema_definitions SET checksum = 'newer' WHERE name = '40_transitions.sql'")
        before = conn.execute("SELECT pg_get_functiondef('wmq_claim'::regproc)").fetchone()
    assert migrate(empty_database) == []
    with psycopg.connect(empty_database) as conn:
        assert pending_migrations(conn) == []
        assert conn.execute("SELECT pg_get_functiondef('wmq_claim'::regproc)").fetchone() == before


def test_webhook_urls_set_before_they_were_rows_are_carried_over(empty_database: str) -> None:
    """A database at version 6 brought to 14 (webhook URLs as one column per event), URLs set,
    then upgraded: each URL becomes its (instance, event) row, and deliveries go to it."""
    restore(empty_database, FIXTURE)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        for path in sorted((SQL_DIR / "migrations").glob("*.sql")):
            if 6 < int(path.name[:3]) <= 14:
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                                 (int(path.name[:3]), path.name))
        first, second = (row[0] for row in conn.execute("SELECT id FROM instances ORDER BY id LIMIT 2"))
        conn.execute("""INSERT INTO instance_webhooks (instance_id, delivery_url, message_status_url, connected_url,
                                                       disconnected_url, secret)
                        VALUES (%s, 'https://a.example/d', NULL, 'https://a.example/c', NULL, 's1'),
                               (%s, NULL, 'https://b.example/s', NULL, 'https://b.example/x', 's2')""",
                     (first, second))
    assert migrate(empty_database) == ["015_webhook_urls.sql", "016_simulator_prepare.sql",
                                       "017_unrestrict_command.sql", "functions/"]
    with psycopg.connect(empty_database) as conn:
        rows = conn.execute("SELECT instance_id, event, url FROM instance_webhook_urls ORDER BY url").fetchall()
        assert rows == [(first, "connected", "https://a.example/c"), (first, "delivery", "https://a.example/d"),
                        (second, "message-status", "https://b.example/s"),
                        (second, "disconnected", "https://b.example/x")]
        conn.execute("SELECT wmq_webhook(%s, 'delivery', '{}'), wmq_webhook(%s, 'delivery', '{}')", (first, second))
        assert conn.execute("SELECT instance_id, url FROM webhook_deliveries").fetchall() == [
            (first, "https://a.example/d")], "only the instance with a delivery URL gets a delivery"
        secrets = conn.execute("SELECT secret FROM wmq_webhook_settings(%s)", (first,)).fetchone()
        assert secrets == ("s1",)
