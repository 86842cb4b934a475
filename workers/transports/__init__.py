"""WhatsApp transports: `simulator` (default) and `neonize` (real WhatsApp)."""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from service.settings import Settings
from workers.transports.base import (
    InstanceDisconnected,
    OutgoingMessage,
    PermanentSendError,
    Presence,
    RetryableSendError,
    Transport,
    TransportError,
)

__all__ = [
    "InstanceDisconnected",
    "OutgoingMessage",
    "PermanentSendError",
    "Presence",
    "RetryableSendError",
    "Transport",
    "TransportError",
    "build_transport",
]


def build_transport(settings: Settings, pool: ConnectionPool) -> Transport:
    if settings.whatsapp_transport == "simulator":
        from workers.transports.simulator import SimulatorTransport

        return SimulatorTransport(pool, timeout=settings.message_queue_job_timeout)
    raise NotImplementedError(
        f"WHATSAPP_TRANSPORT={settings.whatsapp_transport} is not available yet; use simulator"
    )
