"""The API's side of a WhatsApp session: commands left for the worker that owns the session
(pair, pair by phone code, log out, restart) in `instance_commands`, and the wait for its answer.
The owner's side is `session_host.SessionHost`."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from service.core import queries, reads
from service.core.context import Core
from service.core.errors import InstanceNotFound, SessionCommandFailed


def ask(core: Core, instance_id: UUID, command: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask the worker holding the instance's session to act, and wait for its answer (the API's
    side of `instance_commands`)."""
    try:
        row = core.one(queries.INSERT_COMMAND, instance_id=instance_id, command=command, args=Jsonb(args or {}))
    except psycopg.errors.ForeignKeyViolation:  # removed meanwhile
        raise InstanceNotFound("instance not found") from None
    assert row is not None
    deadline = time.monotonic() + core.settings.whatsapp_command_timeout
    while time.monotonic() < deadline:
        done = core.one(queries.COMMAND_RESULT, id=row["id"])
        if done and done["done_at"]:
            if done["error"]:
                raise SessionCommandFailed(done["error"])
            return dict(done["result"] or {})
        time.sleep(0.1)
    core.one(queries.CANCEL_COMMAND, id=row["id"])
    raise SessionCommandFailed("no worker holding this WhatsApp session answered in time")


def request_qr(core: Core, instance_id: UUID) -> dict[str, Any]:
    """The instance's QR code: pairing starts only when someone asks (a pairing attempt runs
    about 160 s, in the worker holding the session). Waits for the first code of a new attempt."""
    status = reads.connection(core, instance_id)
    if status["owner_alive"] and status["connection_state"] == "qr" and status["qr_code"]:
        return status
    ask(core, instance_id, "pair")
    deadline = time.monotonic() + core.settings.whatsapp_command_timeout
    while time.monotonic() < deadline:
        status = reads.connection(core, instance_id)
        if status["connection_state"] == "qr" and status["qr_code"]:
            return status
        if status["connection_state"] != "pairing":  # the attempt ended: the detail says why
            raise SessionCommandFailed(status["connection_detail"] or f"pairing ended: {status['connection_state']}")
        time.sleep(0.2)
    raise SessionCommandFailed("no QR code yet: WhatsApp has not answered the pairing attempt; try again shortly")
