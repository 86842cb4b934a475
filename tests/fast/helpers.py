"""Shared setup of the fast tests: a `Core` on the test's database, instances, messages, worker
heartbeats, and reads of the tables the state machine writes. No API and no worker process:
the tests call the SQL functions (through the core) and look at the rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

from service.core import instances, transitions
from service.core.context import Core
from service.core.models import Claimed
from service.db.pools import make_pool
from service.settings import Settings
from workers.maintenance.loop import Task, run_as_leader

QUEUE = "whatsapp"
PHONE = "5511999999999"


def make_core(database_url: str, **settings: Any) -> Core:
    """A Core with no jitter (due times are exact), and any other settings given."""
    return Core(make_pool(database_url, max_size=4),
                Settings(message_queue_min_jitter=0, message_queue_max_jitter=0, **settings))


def with_settings(core: Core, **settings: Any) -> Core:
    """The same pool, other settings."""
    return dataclasses.replace(core, settings=core.settings.model_copy(update=settings))


def execute(core: Core, statement: str, **params: Any) -> int:
    """Run a statement that returns no rows; how many it touched."""
    with core.pool.connection() as conn:
        return conn.execute(statement, params).rowcount


def sql(core: Core, statement: str, **params: Any) -> list[dict[str, Any]]:
    return core.all(statement, **params)


def one(core: Core, statement: str, **params: Any) -> dict[str, Any] | None:
    return core.one(statement, **params)


def instance(core: Core, *, transport: str = "simulator", min_send_interval_ms: int = 0) -> UUID:
    created = instances.create(core, transport=transport).id
    execute(core, "UPDATE instances SET min_send_interval_ms = %(ms)s WHERE id = %(id)s",
            ms=min_send_interval_ms, id=created)
    return created


def enqueue(core: Core, instance_id: UUID, *, delay_ms: int = 0, typing_ms: int = 0, max_attempts: int = 3) -> str:
    zaap = uuid4().hex
    one(core, """SELECT * FROM wmq_enqueue(%(zaap)s, %(instance)s, 'text', %(phone)s, '{"message": "x"}',
                                           %(delay)s, %(typing)s, 0, NULL, %(max)s, 'whatsapp', 'deliver')""",
        zaap=zaap, instance=instance_id, phone=PHONE, delay=delay_ms, typing=typing_ms, max=max_attempts)
    return zaap


def message(core: Core, zaap: str) -> dict[str, Any]:
    row = one(core, "SELECT * FROM messages WHERE zaap_id = %(zaap)s", zaap=zaap)
    assert row is not None, f"no message {zaap}"
    return row


def broker_row(core: Core, dispatch_id: UUID | None) -> dict[str, Any] | None:
    """The broker's row of one dispatch, if it is there."""
    return one(core, "SELECT * FROM dramatiq.queue WHERE message_id = %(id)s", id=dispatch_id)


def live_broker_row(core: Core, zaap: str) -> dict[str, Any] | None:
    """The broker row of the message's live dispatch."""
    return broker_row(core, message(core, zaap)["dispatch_id"])


def broker_due(core: Core, zaap: str) -> Any:
    """When the broker row of the message's live dispatch falls due (it must be there)."""
    row = live_broker_row(core, zaap)
    assert row is not None, f"message {zaap} has no broker row"
    return row["available_at"]


def events(core: Core, zaap: str) -> list[tuple[str | None, str, str | None]]:
    """The message's history (I6): (from, to, detail), oldest first."""
    rows = sql(core, "SELECT from_status, to_status, detail FROM message_events WHERE zaap_id = %(zaap)s ORDER BY id",
               zaap=zaap)
    return [(r["from_status"], r["to_status"], r["detail"]) for r in rows]


def now(core: Core) -> Any:
    row = one(core, "SELECT now() AS now")
    assert row is not None
    return row["now"]


def worker(core: Core, *, alive: bool = True) -> UUID:
    """A broker worker: a fresh heartbeat (alive) or one an hour old (dead)."""
    worker_id = uuid4()
    execute(core, """INSERT INTO dramatiq.worker (worker_id, heartbeat_at)
                     VALUES (%(id)s, now() - CASE WHEN %(alive)s THEN interval '0' ELSE interval '1 hour' END)""",
            id=worker_id, alive=alive)
    return worker_id


def claim(core: Core, zaap: str, worker_id: UUID) -> Claimed | None:
    """Claim the message for its live dispatch, as the worker that consumed it would."""
    return transitions.claim(core, zaap, message(core, zaap)["dispatch_id"], worker_id)


def redispatch(core: Core, zaap: str) -> UUID:
    """A new dispatch of the message (phase 1, due now), as a retry or a resume makes one."""
    row = one(core, "SELECT wmq_dispatch(%(zaap)s, 1::smallint, now(), 'whatsapp', 'deliver') AS id", zaap=zaap)
    assert row is not None
    return UUID(str(row["id"]))


def lead(core: Core, run: Callable[..., int]) -> int | None:
    """Run a maintenance task module's `run(core, conn)` as the maintenance loop does."""
    return run_as_leader(core.pool, Task(run.__module__, lambda conn: run(core, conn)))
