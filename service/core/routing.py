"""Where dispatches go: the broker queue of an instance and the actor that runs them.

Which queue serves which instance is decided by the database, from data (the `transports`
table: service/sql/functions/20_routing.sql). Python passes the base queue name and the actor names,
and asks the database which queues exist (`queues`), so no name is worked out twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from uuid import UUID

from service.core import queries
from service.settings import Settings

if TYPE_CHECKING:
    from service.core.context import Core

#: The broker actors dispatches name (workers/actors.py registers them under these names):
#: `deliver` runs one phase of one message; `presence` only shows a presence (no message).
DELIVER_ACTOR = "deliver"
PRESENCE_ACTOR = "presence"


@dataclass(frozen=True)
class Route:
    queue: str
    actor: str = DELIVER_ACTOR
    presence_actor: str = PRESENCE_ACTOR

    @classmethod
    def from_settings(cls, settings: Settings) -> Route:
        return cls(queue=settings.message_queue_name)

    def params(self) -> dict[str, str]:
        """The route as the SQL functions take it (`p_queue`, `p_actor`, `p_presence_actor`)."""
        return {"queue": self.queue, "actor": self.actor, "presence_actor": self.presence_actor}


def queues(core: Core, worker_id: UUID) -> list[str]:
    """The broker queues a worker consumes (service/sql/functions/20_routing.sql): the shared
    ones, and its own for the session instances it owns. The parking queue of session instances
    nobody owns is consumed by nobody, so not declared (each consumer holds two connections)."""
    shared = [r["queue_name"] for r in core.all(queries.QUEUES, queue=core.route.queue) if not r["session_bound"]]
    own = core.one(queries.SESSION_QUEUE, queue=core.route.queue, worker_id=worker_id)
    assert own is not None
    return [*shared, own["name"]]
