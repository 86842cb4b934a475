"""What an operator looks at (the dashboard): every instance with its backlog and whether it is
stuck, one instance's queue, recent discards, throughput and lateness over the last hour, and
the workers. Per-instance figures live here and in the views, never in metric labels."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from service.core import queries
from service.core.context import Core
from service.core.errors import InstanceNotFound
from service.core.models import QueuedMessage

#: How the instances can be ordered; stuck ones always come first.
SORTS: dict[str, tuple[str, bool]] = {
    "name": ("name", False),
    "depth": ("depth", True),
    "next_due": ("next_due_at", False),
    "overdue": ("overdue_since", False),
    "sent": ("sent_last_hour", True),
    "connection": ("connection_state", False),
}


def instances(core: Core, sort: str = "overdue") -> list[dict[str, Any]]:
    """Every instance, stuck ones first (DASHBOARD_STUCK_AFTER), then by `sort` (SORTS)."""
    rows = core.all(queries.OVERVIEW_INSTANCES, stuck_after_s=core.settings.dashboard_stuck_after,
                    instance_id=None)
    column, descending = SORTS.get(sort, SORTS["overdue"])
    present = [r for r in rows if r[column] is not None]
    present.sort(key=lambda r: r[column], reverse=descending)
    ordered = present + [r for r in rows if r[column] is None]
    return sorted(ordered, key=lambda r: not r["stuck"])  # stable: keeps `sort` within each group


def instance(core: Core, instance_id: UUID) -> dict[str, Any]:
    rows = core.all(queries.OVERVIEW_INSTANCES, stuck_after_s=core.settings.dashboard_stuck_after,
                    instance_id=instance_id)
    if not rows:
        raise InstanceNotFound("instance not found")
    return rows[0]


def recent_finished(core: Core, instance_id: UUID, limit: int = 20) -> list[QueuedMessage]:
    return [QueuedMessage.from_row(r) for r in core.all(queries.RECENT_FINISHED, instance_id=instance_id,
                                                         limit=limit)]


def recent_discarded(core: Core, limit: int = 100) -> list[dict[str, Any]]:
    return core.all(queries.RECENT_DISCARDED, limit=limit)


def throughput(core: Core) -> list[dict[str, Any]]:
    """One row per minute of the last hour that saw a message finish."""
    return core.all(queries.THROUGHPUT)


def workers(core: Core) -> list[dict[str, Any]]:
    return core.all(queries.WORKERS, ttl_s=core.settings.message_queue_heartbeat_ttl)
