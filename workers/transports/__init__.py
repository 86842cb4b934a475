"""WhatsApp transports: `simulator` (default) and `neonize` (real WhatsApp)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from uuid import UUID

from psycopg_pool import ConnectionPool

from service.core import Coordinator
from service.db import fetch_one
from service.settings import Settings
from workers.transports.base import (
    InstanceDisconnected,
    OutgoingMessage,
    PermanentSendError,
    Presence,
    RetryableSendError,
    Transport,
    TransportError,
    UncertainSendError,
)

__all__ = [
    "InstanceDisconnected",
    "OutgoingMessage",
    "PermanentSendError",
    "Presence",
    "RetryableSendError",
    "Transport",
    "TransportError",
    "UncertainSendError",
    "build_transport",
]


class RoutingTransport:
    """Each instance keeps the transport it was created with: route every call by instance.

    The neonize transport (and with it the Go library) is loaded on first use only."""

    def __init__(self, pool: ConnectionPool, transports: dict[str, Callable[[], Transport]],
                 closers: list[Callable[[], None]] | None = None) -> None:
        self.pool = pool
        self.factories = transports
        self.closers = closers or []
        self.transports: dict[str, Transport] = {}
        self.kind_of: dict[UUID, str] = {}
        self._lock = threading.Lock()

    def _for(self, instance_id: UUID) -> Transport:
        kind = self.kind_of.get(instance_id)
        if kind is None:
            row = fetch_one(self.pool, "SELECT transport FROM instances WHERE id = %(id)s", {"id": instance_id})
            if row is None:
                raise InstanceDisconnected("the instance no longer exists")
            kind = self.kind_of[instance_id] = row["transport"]
        with self._lock:
            if kind not in self.transports:
                self.transports[kind] = self.factories[kind]()
        return self.transports[kind]

    def is_connected(self, instance_id: UUID) -> bool:
        return self._for(instance_id).is_connected(instance_id)

    def send_presence(self, instance_id: UUID, phone: str, presence: Presence) -> None:
        self._for(instance_id).send_presence(instance_id, phone, presence)

    def send(self, message: OutgoingMessage) -> str:
        return self._for(message.instance_id).send(message)

    def close(self) -> None:
        for transport in self.transports.values():
            transport.close()
        for close in self.closers:
            close()


def build_transport(settings: Settings, pool: ConnectionPool, coordinator: Coordinator, database_url: str,
                    worker_id: UUID, on_ownership: Callable[[bool], None] | None = None) -> RoutingTransport:
    """The worker's transport. The WhatsApp session manager runs from the start (sessions must
    show their QR codes before any message); it loads neonize once a neonize instance exists."""
    from workers.transports.neonize.manager import SessionManager

    manager = SessionManager(coordinator, settings, database_url, worker_id, on_ownership=on_ownership)
    manager.start()

    def simulator() -> Transport:
        from workers.transports.simulator import SimulatorTransport

        return SimulatorTransport(pool, timeout=settings.message_queue_job_timeout)

    def neonize() -> Transport:
        from workers.transports.neonize.transport import NeonizeTransport

        return NeonizeTransport(manager, timeout=settings.message_queue_job_timeout,
                                threads=settings.message_queue_worker_threads)

    return RoutingTransport(pool, {"simulator": simulator, "neonize": neonize}, closers=[manager.stop])
