"""The one small interface every WhatsApp transport implements, and its typed errors.

The WhatsApp edge knows no queue: it is told what to send and says how it went. What a
session transport records (connection states, pairing codes) goes through `SessionHost`, which
the worker wires to the core.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

Presence = Literal["composing", "recording", "paused"]


def _unguarded() -> datetime | None:
    return None


@dataclass(frozen=True)
class OutgoingMessage:
    zaap_id: str
    instance_id: UUID
    phone: str
    message_type: str
    payload: dict[str, Any]
    #: Called right before the irreversible write (the frame leaves, the simulator records it),
    #: after any preparation (media fetched, uploaded, encrypted): raises `ClaimLost` when the
    #: message is no longer this worker's (it stood still past the TTL and was rescued, its
    #: session lease moved), and nothing may be written then. Returns the time, on the database's
    #: clock, by which the write must have landed to still count as checked (a receiver that can
    #: tell, the simulator, refuses it later), or None. Costs nothing on a fresh claim.
    before_write: Callable[[], datetime | None] = _unguarded


class TransportError(Exception):
    """Base of the errors a transport raises; anything else counts as retryable."""


class InstanceDisconnected(TransportError):
    """The instance has no live WhatsApp connection: nothing was sent. The head waits."""


class RetryableSendError(TransportError):
    """The send failed in a way that may pass (timeout, server error): try again later."""


class PermanentSendError(TransportError):
    """The send can never succeed (invalid number, unsupported content): discard."""


class ClaimLost(TransportError):
    """Raised by `OutgoingMessage.before_write`: the message is no longer this worker's to send.
    Nothing was written; the delivery leaves the message to whoever holds it now."""


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

    def lease_fence(self, instance_id: UUID) -> int | None:
        """The fence of the instance's lease while this worker holds it, else None."""
        ...

    def record(self, instance_id: UUID, state: str, detail: str | None, **extra: Any) -> None: ...

    def receipt(self, instance_id: UUID, message_ids: list[str], kind: str, at: datetime) -> int:
        """WhatsApp's receipt (`delivered`, `read`, `played`) for messages the instance sent."""
        ...

    def run_commands(self, instance_ids: list[UUID],
                     execute: Callable[[UUID, str, dict[str, Any]], dict[str, Any]]) -> None: ...


class UncertainSendError(TransportError):
    """The call did not answer in time: WhatsApp may or may not have the message. Retried or
    discarded as `MESSAGE_QUEUE_RESEND_UNCERTAIN` says, like a send cut short by a crash.

    `late`: the call itself, still going on, when it may yet answer; its result is the WhatsApp
    id. The message is then not sent again for `late_within` seconds (after which the call can
    no longer return), and if the call answers with an id meanwhile, the message is completed
    with it (workers/actors.py): a late success is recorded, never sent twice."""

    def __init__(self, message: str, *, late: Future[str] | None = None, late_within: float = 0.0) -> None:
        super().__init__(message)
        self.late = late
        self.late_within = late_within
