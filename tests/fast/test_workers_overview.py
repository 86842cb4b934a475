"""The dashboard's workers page counts, per worker, the session store connections of the sessions
it holds: neonize opens a pool per client, which README's connection sizing counts too."""

from __future__ import annotations

import psycopg

from service.core import overview
from service.core.context import Core
from service.core.session_host import SessionHost
from tests.fast.helpers import instance, worker


def test_each_worker_is_shown_with_the_store_connections_of_the_sessions_it_holds(core: Core,
                                                                                  database_url: str) -> None:
    holder, idle = worker(core), worker(core)
    session = instance(core, transport="simulator-session")
    assert session in SessionHost(core, holder).lease_round(judge=True)
    # What neonize's pool for that session's client looks like (workers/transports/neonize/store.py).
    with psycopg.connect(database_url, application_name=f"wmq-store:{session}/1"), \
            psycopg.connect(database_url, application_name=f"wmq-store:{session}/1"), \
            psycopg.connect(database_url, application_name="wmq-store:not-an-instance/1"):
        rows = {r["worker_id"]: r for r in overview.workers(core)}
    assert rows[holder]["store_connections"] == 2
    assert rows[idle]["store_connections"] == 0
