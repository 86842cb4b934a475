"""The core's vocabulary: what goes in and what comes out (errors: service/core/errors.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

#: The statuses users see for a message still in its queue (`available` is derived).
PENDING_STATUSES = ("scheduled", "available", "retryable", "running", "typing", "sending")


@dataclass(frozen=True)
class MessageRequest:
    """One message to enqueue, already validated (service/api/schemas.py)."""

    phone: str
    message_type: str
    payload: dict[str, Any]
    delay_message_ms: int = 0
    delay_typing_ms: int = 0
    scheduled_for: datetime | None = None


@dataclass(frozen=True)
class Enqueued:
    zaap_id: str
    instance_id: UUID
    sequence: int
    scheduled_at: datetime
    status: str
    #: The first answer given again for a repeated idempotency key: nothing new was stored.
    replayed: bool = False


@dataclass(frozen=True)
class Instance:
    id: UUID
    token: str
    client_token: str | None
    name: str
    transport: str
    paused: bool
    connection_state: str
    connection_detail: str | None
    whatsapp_jid: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Instance:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Claimed:
    """A message a worker has claimed (sql `wmq_claim`), with what the claim granted: `typing`
    (show the presence, then come back after delayTyping) or `send` (the WhatsApp call); or
    `busy`: not granted, the message is in flight with another worker under this very dispatch."""

    granted: Literal["typing", "send", "busy"]
    zaap_id: str
    instance_id: UUID
    sequence: int
    message_type: str
    phone: str
    payload: dict[str, Any]
    delay_typing_ms: int
    attempts: int
    scheduled_at: datetime
    #: At the claim, by the database's clock: how late against the due time (negative: early),
    #: and how long since the message was accepted.
    late_s: float = field(compare=False)
    accepted_s: float = field(compare=False)
    #: When this process asked for the claim (time.monotonic()), to time the rest of the send and
    #: to tell a claim that may have outlived a pause (workers/claim_guard.py).
    claimed_at: float = field(default_factory=time.monotonic, compare=False)
    #: The dispatch it was claimed under, and the database's clock at the claim.
    dispatch_id: UUID | None = field(default=None, compare=False)
    claimed_db_at: datetime | None = field(default=None, compare=False)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Claimed:
        return cls(**row)

    @property
    def first_start(self) -> bool:
        """This claim starts the message (its typing, or its send when it has none) for the
        first time: its lateness is this claim's."""
        return self.granted == "typing" or (self.granted == "send" and self.delay_typing_ms == 0
                                             and self.attempts == 1)

    def log_context(self) -> dict[str, Any]:
        return {"zaap_id": self.zaap_id, "instance_id": str(self.instance_id), "sequence": self.sequence,
                "attempt": self.attempts, "scheduled_at": self.scheduled_at.isoformat()}


@dataclass
class QueuedMessage:
    """A message as stored, with its derived status (`available`) and queue position."""

    zaap_id: str
    instance_id: UUID
    sequence: int
    message_type: str
    phone: str
    payload: dict[str, Any]
    status: str
    delay_message_ms: int
    delay_typing_ms: int
    scheduled_at: datetime
    available_at: datetime | None
    attempts: int
    max_attempts: int
    last_error: str | None
    whatsapp_message_id: str | None
    enqueued_at: datetime
    started_at: datetime | None
    sent_at: datetime | None
    finished_at: datetime | None
    worker_id: UUID | None
    phase: int | None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    played_at: datetime | None = None
    position: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> QueuedMessage:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__ if f in row})
