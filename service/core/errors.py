"""The core's errors. Each says what kind of failure it is; the API maps kinds to HTTP statuses
in one table (service/api/errors.py), so an error it does not know is a 500 it logs, never a
guess."""

from __future__ import annotations

from typing import Literal

Kind = Literal["not_found", "conflict", "invalid"]


class CoreError(Exception):
    """Base of the errors the core raises on purpose. `field` names the culprit for the caller."""

    kind: Kind = "invalid"
    field: str = ""


class InstanceNotFound(CoreError):
    kind = "not_found"
    field = "instance"


class MessageNotFound(CoreError):
    kind = "not_found"
    field = "zaapId"


class UnknownTransport(CoreError):
    kind = "invalid"
    field = "transport"


class DueTimeTooFar(CoreError):
    """The delays chain past what a timestamp can hold (more than 100 years away)."""

    kind = "invalid"
    field = "delayMessage"


class CancelRefused(CoreError):
    """The message is being sent, or already finished: it can no longer be cancelled."""

    kind = "conflict"
    field = "zaapId"

    def __init__(self, status: str) -> None:
        super().__init__(f"message is {status} and can no longer be cancelled")
        self.status = status


class SessionCommandFailed(CoreError):
    """The WhatsApp session could not do what was asked (or no worker holds it)."""

    kind = "conflict"
    field = "instance"
