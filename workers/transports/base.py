"""The one small interface every WhatsApp transport implements, and its typed errors.

The WhatsApp edge knows no queue: it is told what to send and says how it went. What a
session transport records (connection states, pairing codes) goes through `SessionHost`, which
the worker wires to the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

Presence = Literal["composing", "recording", "paused"]


@dataclass(frozen=True)
class OutgoingMessage:
    zaap_id: str
    instance_id: UUID
    phone: str
    message_type: str
    payload: dict[str, Any]


class TransportError(Exception):
    """Base of the errors a transport raises; anything else counts as retryable."""


class InstanceDisconnected(TransportError):
    """The instance has no live WhatsApp connection: nothing was sent. The head waits."""


class RetryableSendError(TransportError):
    """The send failed in a way that may pass (timeout, server error): try again later."""


class PermanentSendError(TransportError):
    """The send can never succeed (invalid number, unsupported content): discard."""


class Transport(Protocol):
    def is_connected(self, instance_id: UUID) -> bool: ...

    def send_presence(self, instance_id: UUID, phone: str, presence: Presence) -> None: ...

    def send(self, message: OutgoingMessage) -> str:
        """Send and return the WhatsApp message id (the sender cannot choose it)."""
        ...

    def close(self) -> None: ...


class SessionHost(Protocol):
    """What a session-holding transport needs from the core (service/core/sessions.py)."""

    def hold(self) -> bool:
        """Whether this worker's session leases are current (its lease keeper runs)."""
        ...

    def instances(self, transport: str) -> dict[UUID, str | None]:
        """The instances of `transport` whose session this worker owns, with their WhatsApp ids."""
        ...

    def record(self, instance_id: UUID, state: str, detail: str | None, **extra: Any) -> None: ...

    def receipt(self, instance_id: UUID, message_ids: list[str], kind: str, at: datetime) -> int:
        """WhatsApp's receipt (`delivered`, `read`, `played`) for messages the instance sent."""
        ...

    def run_commands(self, instance_ids: list[UUID],
                     execute: Callable[[UUID, str, dict[str, Any]], dict[str, Any]]) -> None: ...


class UncertainSendError(TransportError):
    """The call did not answer in time: WhatsApp may or may not have the message. Retried or
    discarded as `MESSAGE_QUEUE_RESEND_UNCERTAIN` says, like a send cut short by a crash."""
