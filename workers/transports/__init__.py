"""WhatsApp transports: the table of them, and the router that sends each instance's calls to
the transport it was created with. A new transport is a module and an entry in `TRANSPORTS`
(plus its row in the `transports` table, by a migration: service/sql/migrations/007_transports.sql).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from service.settings import Settings
from workers.transports.base import (
    ClaimLost,
    InstanceDisconnected,
    OutgoingMessage,
    PermanentSendError,
    Presence,
    RetryableSendError,
    SessionHost,
    Transport,
    TransportError,
    UncertainSendError,
)

__all__ = [
    "TRANSPORTS",
    "ClaimLost",
    "InstanceDisconnected",
    "OutgoingMessage",
    "PermanentSendError",
    "Presence",
    "RetryableSendError",
    "RoutingTransport",
    "Transport",
    "TransportError",
    "UncertainSendError",
    "Wiring",
]


@dataclass
class Wiring:
    """What a transport may use, given by workers/main.py. `state` holds what a transport's
    `start` made for its `build` (the WhatsApp session manager)."""

    pool: ConnectionPool
    settings: Settings
    database_url: str
    worker_id: UUID
    sessions: SessionHost
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TransportSpec:
    #: Builds the transport, on the first message of one of its instances (neonize loads Go).
    build: Callable[[Wiring], Transport]
    #: Started with the worker, before any message (sessions must show their QR codes); returns
    #: what stops it.
    start: Callable[[Wiring], Callable[[], None]] | None = None
    #: Upkeep of records of its own, run by the maintenance leader; returns rows removed.
    maintenance: Callable[[psycopg.Connection[Any], Settings], int] | None = None


def _simulator(wiring: Wiring) -> Transport:
    from workers.transports.simulator import SimulatorTransport

    return SimulatorTransport(wiring.pool, timeout=wiring.settings.message_queue_job_timeout)


def _simulator_purge(conn: psycopg.Connection[Any], settings: Settings) -> int:
    from workers.transports.simulator import purge

    return purge(conn, settings)


def _neonize_start(wiring: Wiring) -> Callable[[], None]:
    from workers.transports.neonize.manager import SessionManager

    manager = wiring.state["neonize"] = SessionManager(wiring.sessions, wiring.settings, wiring.database_url,
                                                       transport="neonize")
    manager.start()
    return manager.stop


def _neonize(wiring: Wiring) -> Transport:
    from workers.transports.neonize import IMPORT_LOCK

    with IMPORT_LOCK:
        from workers.transports.neonize.transport import NeonizeTransport

    return NeonizeTransport(wiring.state["neonize"], timeout=wiring.settings.message_queue_job_timeout,
                            threads=wiring.settings.message_queue_worker_threads)


TRANSPORTS: dict[str, TransportSpec] = {
    "simulator": TransportSpec(build=_simulator, maintenance=_simulator_purge),
    # The simulator as a session transport: its instances are owned through leases like
    # WhatsApp sessions (one worker at a time), with nothing to connect.
    "simulator-session": TransportSpec(build=_simulator),
    "neonize": TransportSpec(build=_neonize, start=_neonize_start),
}


class RoutingTransport:
    """Each instance keeps the transport it was created with: route every call by instance.
    Transports are built on first use; `transport_of` (the core's, wired in workers/main.py)
    says which one an instance has."""

    def __init__(self, wiring: Wiring, transport_of: Callable[[UUID], str | None],
                 specs: dict[str, TransportSpec] = TRANSPORTS) -> None:
        self.wiring = wiring
        self.transport_of = transport_of
        self.specs = specs
        self.transports: dict[str, Transport] = {}
        self.kind_of: dict[UUID, str] = {}
        self._lock = threading.Lock()
        self._stops = [spec.start(wiring) for spec in specs.values() if spec.start]

    def _for(self, instance_id: UUID) -> Transport:
        kind = self.kind_of.get(instance_id)
        if kind is None:
            found = self.transport_of(instance_id)
            if found is None:
                raise InstanceDisconnected("the instance no longer exists")
            kind = self.kind_of[instance_id] = found
        with self._lock:
            if kind not in self.transports:
                self.transports[kind] = self.specs[kind].build(self.wiring)
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
        for stop in self._stops:
            stop()
