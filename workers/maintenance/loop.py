"""The maintenance loop: a daemon thread of each worker process that runs every task once per
`MESSAGE_QUEUE_MAINTENANCE_INTERVAL`. Each task runs in a transaction that first takes the
maintenance advisory lock, so at most one process does it at a time; the tasks re-check every
message under its instance lock as well, so even two leaders could not act twice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from service.core import maintenance
from service.core.context import Core
from workers.background import Background, Connection
from workers.maintenance import dispatcher, rescuer, retention

logger = logging.getLogger("wmq.maintenance")


@dataclass(frozen=True)
class Task:
    name: str
    #: Runs on a connection whose transaction holds the maintenance lock; returns rows handled.
    run: Callable[[psycopg.Connection[Any]], int]


def core_tasks(core: Core, judge: Callable[[], bool]) -> list[Task]:
    """The core's tasks; `judge` says whether this process may take a stale heartbeat for a dead
    worker (workers/liveness.py `Heartbeat.may_judge`)."""
    return [
        Task("rescuer", lambda conn: rescuer.run(core, conn, judge=judge())),
        Task("dispatcher", lambda conn: dispatcher.run(core, conn)),
        Task("retention", lambda conn: retention.run(core, conn)),
    ]


def run_as_leader(pool: ConnectionPool, task: Task) -> int | None:
    """Run `task` if this transaction wins the maintenance lock; None if another process has it."""
    with pool.connection() as conn, conn.transaction():
        if not maintenance.try_lead(conn):
            return None
        return task.run(conn)


class MaintenanceLoop(Background):
    """Every task once per `interval`, the first after one interval (workers/background.py runs
    the rounds), on the pool: no connection of its own. A task that fails is logged and the
    others run; the next round comes at its time."""

    def __init__(self, pool: ConnectionPool, tasks: list[Task], interval: float) -> None:
        super().__init__("wmq-maintenance", logger=logger, first_wait=interval, retry=interval,
                         max_retry=interval, stop_timeout=30)
        self.pool = pool
        self.tasks = tasks
        self.interval = interval

    def run_once(self) -> dict[str, int | None]:
        done: dict[str, int | None] = {}
        for task in self.tasks:
            try:
                done[task.name] = run_as_leader(self.pool, task)
            except Exception:
                logger.exception("maintenance task failed", extra={"task": task.name})
        return done

    def round(self, conn: Connection | None) -> float:
        self.run_once()
        return self.interval
