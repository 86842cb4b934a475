"""The core's errors. Each says what kind of failure it is and what it is about; the API maps
kinds to HTTP statuses and subjects to its wire field names in one place (service/api/errors.py),
so an error it does not know is a 500 it logs, never a guess."""

from __future__ import annotations

from typing import Literal

Kind = Literal["not_found", "conflict", "invalid", "unprocessable", "rate_limited", "too_large"]
Subject = Literal["instance", "message", "transport", "delay", "idempotency_key", "force", "payload"]


class CoreError(Exception):
    """Base of the errors the core raises on purpose: each subclass says its `kind` and its
    `subject` (what the error is about); the base has neither, so a forgotten one is a 500."""

    kind: Kind
    subject: Subject


class InstanceNotFound(CoreError):
    kind = "not_found"
    subject = "instance"


class MessageNotFound(CoreError):
    kind = "not_found"
    subject = "message"


class UnknownTransport(CoreError):
    kind = "invalid"
    subject = "transport"


class DueTimeTooFar(CoreError):
    """The delays chain past what a timestamp can hold (more than 100 years away)."""

    kind = "invalid"
    subject = "delay"


class CancelRefused(CoreError):
    """The message is being sent, or already finished: it can no longer be cancelled."""

    kind = "conflict"
    subject = "message"

    def __init__(self, status: str) -> None:
        super().__init__(f"message is {status} and can no longer be cancelled")
        self.status = status


class RetryRefused(CoreError):
    """Only a discarded message can be sent again as a new one."""

    kind = "conflict"
    subject = "message"

    def __init__(self, status: str) -> None:
        super().__init__(f"message is {status}; only a discarded message can be retried as a new one")


class InstanceHasPending(CoreError):
    """The instance still has messages to send: removing it would drop them (unless forced)."""

    kind = "conflict"
    subject = "force"

    def __init__(self, pending: int) -> None:
        super().__init__(f"the instance has {pending} message(s) still to send; ?force=true removes it and them")
        self.pending = pending


class RateLimited(CoreError):
    """The instance accepted as many messages this minute as its cap allows."""

    kind = "rate_limited"
    subject = "instance"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PendingBytesExceeded(CoreError):
    """The instance's messages still to send hold as many stored bytes as it may keep waiting
    (MESSAGE_QUEUE_MAX_PENDING_BYTES): this large one would pass the limit."""

    kind = "too_large"
    subject = "payload"

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class IdempotencyKeyReused(CoreError):
    """The idempotency key was used, within its time to live, for another request."""

    kind = "unprocessable"
    subject = "idempotency_key"


class SessionCommandFailed(CoreError):
    """The WhatsApp session could not do what was asked (or no worker holds it)."""

    kind = "conflict"
    subject = "instance"
