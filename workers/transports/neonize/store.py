"""The WhatsApp session store: whatsmeow's own tables, in a schema of our database.

Read through PostgreSQL, not through neonize's `GetAllDevices`: that one returns
`"%s,%s,%s,%t"` rows that neonize splits on `,`, so a comma in any paired account's push name or
business name (or a Go `"error: …"` string) breaks it.

Every `connect()` makes neonize open a new connection pool on the store that is never closed. Each
client's pool carries an `application_name` of its own (`store_url(…, key)`), so once the client
is gone its connections are ended (`release_connections`) instead of piling up with every
reconnect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from service.db.migrations import MIGRATION_LOCK_ID

APPLICATION_PREFIX = "wmq-store:"


class StoreError(Exception):
    """The session store cannot be used; every instance of the transport shows why."""


def store_url(database_url: str, schema: str, key: str = "init") -> str:
    """whatsmeow's store URL (lib/pq): a `postgres…` URL on our database, in its own schema,
    with the client's key as its `application_name`.

    neonize picks PostgreSQL over SQLite by the name's prefix, so a key=value DSN is rewritten.
    `search_path` goes as a startup parameter, which PgBouncer in transaction mode cannot carry.
    """
    params = conninfo_to_dict(database_url)
    user = quote(str(params.pop("user", "postgres")), safe="")
    password = params.pop("password", None)
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    dbname = quote(str(params.pop("dbname", "postgres")), safe="")
    query: dict[str, Any] = {"search_path": schema, "sslmode": params.pop("sslmode", "disable"),
                             "connect_timeout": 5, "application_name": f"{APPLICATION_PREFIX}{key}"[:63]}
    auth = f"{user}:{quote(str(password), safe='')}@" if password else f"{user}@"
    if host.startswith("/"):  # a unix socket directory
        query["host"] = host
        netloc = auth
    else:
        netloc = auth + host + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{dbname}?{urlencode(query)}"


def check_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """whatsmeow's migrations look tables up by name in any schema: a `whatsmeow_version` left in
    another schema (`public`, often) makes them skip creating the tables in ours."""
    ours = conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s"
                        " AND table_name = 'whatsmeow_version'", (schema,)).fetchone()
    others = [row[0] for row in conn.execute(
        "SELECT table_schema FROM information_schema.tables WHERE table_schema <> %s"
        " AND table_name = 'whatsmeow_version' ORDER BY 1", (schema,))]
    if others and not ours:
        raise StoreError(f"a whatsmeow_version table in schema {', '.join(others)} hides the session store's"
                         f" tables from whatsmeow: drop or rename it, or set WHATSAPP_STORE_SCHEMA to that schema")


def init_store(database_url: str, schema: str) -> None:
    """Create the store's schema and tables once, under the migration lock: two processes
    creating them at once fail."""
    from neonize._binder import func_callback_bytes2
    from neonize.client import gocode, log_whatsmeow

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            check_schema(conn, schema)
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            # Opening the store creates its tables; the answer (the devices, or "error: …") is
            # only read for the error: the devices are read from the tables (`device_exists`).
            answer = gocode.GetAllDevices(store_url(database_url, schema).encode(),
                                          func_callback_bytes2(log_whatsmeow))
            text = bytes(answer or b"").decode(errors="replace")
            if text.startswith("error: "):
                raise StoreError(f"the WhatsApp session store cannot be opened: {text.removeprefix('error: ')}")
            if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".whatsmeow_device',)).fetchone() == (None,):
                raise StoreError(f"whatsmeow did not create its tables in schema {schema}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    release_connections(database_url, "init")


def device_exists(database_url: str, schema: str, jid: str) -> bool:
    """Whether the store holds this device (`user:device@server`): whatsmeow panics on one it
    does not."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f'SELECT 1 FROM "{schema}".whatsmeow_device WHERE jid = %s', (jid,)).fetchone()
    return row is not None


def release_connections(database_url: str, key: str) -> int:
    """End the store connections of a client that is gone (its pool is never closed by neonize)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
                            " AND pid <> pg_backend_pid()", (f"{APPLICATION_PREFIX}{key}"[:63],)).fetchall()
    return len(rows)


@dataclass(frozen=True)
class Store:
    """The session store as a session uses it."""

    database_url: str
    schema: str

    def url(self, key: str) -> str:
        return store_url(self.database_url, self.schema, key)

    def device_exists(self, jid: str) -> bool:
        return device_exists(self.database_url, self.schema, jid)

    def release(self, key: str) -> None:
        release_connections(self.database_url, key)
