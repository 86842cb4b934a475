"""The core's vocabulary: what goes in, what comes out, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

#: The broker actors dispatches name (workers/actors.py registers them under these names):
#: `deliver` runs one phase of one message; `presence` only shows a presence (no message).
DELIVER_ACTOR = "deliver"
PRESENCE_ACTOR = "presence"

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


@dataclass
class Job:
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
    position: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__ if f in row})


class CoreError(Exception):
    """Base of the errors the API maps to 4xx answers."""

    field: str = ""


class InstanceNotFound(CoreError):
    field = "instance"


class InvalidToken(CoreError):
    field = "token"


class InvalidClientToken(CoreError):
    field = "Client-Token"


class DueTimeTooFar(CoreError):
    """The delays chain past what a timestamp can hold (more than 100 years away)."""

    field = "delayMessage"


class SessionCommandFailed(CoreError):
    """The WhatsApp session could not do what was asked (or no worker holds it)."""

    field = "instance"


class JobNotFound(CoreError):
    field = "zaapId"


class CancelRefused(CoreError):
    """The message is being sent, or already finished: it can no longer be cancelled."""

    field = "zaapId"

    def __init__(self, status: str) -> None:
        super().__init__(f"message is {status} and can no longer be cancelled")
        self.status = status
