"""The WhatsApp session store: whatsmeow's own tables, in a schema of our database."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg.conninfo import conninfo_to_dict

from service.db import MIGRATION_LOCK_ID


def store_url(database_url: str, schema: str) -> str:
    """whatsmeow's store URL (lib/pq): a `postgres…` URL on our database, in its own schema.

    neonize picks PostgreSQL over SQLite by the name's prefix, so a key=value DSN is rewritten.
    """
    params = conninfo_to_dict(database_url)
    user = quote(str(params.pop("user", "postgres")))
    password = params.pop("password", None)
    host = str(params.pop("host", ""))
    port = params.pop("port", None)
    dbname = quote(str(params.pop("dbname", "postgres")))
    query: dict[str, Any] = {"search_path": schema, "sslmode": params.pop("sslmode", "disable")}
    auth = f"{user}:{quote(str(password))}@" if password else f"{user}@"
    if host.startswith("/"):  # a unix socket directory
        query["host"] = host
        netloc = auth
    else:
        netloc = auth + host + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{dbname}?{urlencode(query)}"


def init_store(database_url: str, schema: str) -> str:
    """Create the store's schema and tables once, under the migration lock: two processes
    creating them at once fail. Returns the store URL."""
    from neonize.client import ClientFactory

    url = store_url(database_url, schema)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            ClientFactory.get_all_devices_from_db(url)  # opens the store: creates its tables
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return url


def device_exists(database_url: str, schema: str, jid: str) -> bool:
    """Whether the store holds this device (`user:device@server`): whatsmeow panics on one it
    does not."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(f'SELECT 1 FROM "{schema}".whatsmeow_device WHERE jid = %s', (jid,)).fetchone()
    return row is not None
