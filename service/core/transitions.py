"""What a worker does to a message (service/sql/functions/40_transitions.sql): claim it (I4), show the
typing, record the send, a failure or a snooze. Each returns whether the message was still this
worker's: a transition never touches a message another worker or the rescuer has taken."""

from __future__ import annotations

import time
from datetime import datetime
from uuid import UUID

from service.core import queries
from service.core.context import Core
from service.core.models import Claimed


def claim(core: Core, zaap_id: str, dispatch_id: UUID, worker_id: UUID) -> Claimed | None:
    """The message, now this worker's, with the phase the claim granted (`busy`: in flight with
    another worker under this dispatch); None if this broker message is not the message's live
    dispatch (stale: skip it). Asking again for a dispatch this worker holds returns its grant."""
    asked_at = time.monotonic()  # before the statement: a guard's bound counts from here
    row = core.one(queries.CLAIM, zaap_id=zaap_id, dispatch_id=dispatch_id, worker_id=worker_id)
    return None if row is None else Claimed.from_row({**row, "claimed_at": asked_at})


def claim_holds(core: Core, zaap_id: str, worker_id: UUID, dispatch_id: UUID) -> datetime | None:
    """Whether the send claim still holds (sql `wmq_claim_holds`): the database's clock if so
    (this worker's heartbeat written with it), None when the message is no longer ours."""
    row = core.one(queries.CLAIM_HOLDS, zaap_id=zaap_id, worker_id=worker_id, dispatch_id=dispatch_id)
    return row["checked_at"] if row else None


def start_typing(core: Core, zaap_id: str, worker_id: UUID) -> bool:
    """The presence is shown: come back for the send after delayTyping (no thread waits)."""
    row = core.one(queries.START_TYPING, zaap_id=zaap_id, worker_id=worker_id, **core.route.params())
    return bool(row and row["ok"])


def complete(core: Core, zaap_id: str, worker_id: UUID, whatsapp_id: str, dispatch_id: UUID | None = None) -> bool:
    """The send went out: record it, settle its broker message, dispatch the next head. With the
    claim's `dispatch_id`, a message this worker is sending again under another dispatch (its
    retry, claimed since) is not completed by the earlier call's answer."""
    row = core.one(queries.COMPLETE, zaap_id=zaap_id, worker_id=worker_id, whatsapp_id=whatsapp_id,
                   dispatch_id=dispatch_id, **core.route.params())
    return bool(row and row["ok"])


def fail(core: Core, zaap_id: str, worker_id: UUID, error: str, *, permanent: bool, backoff: float) -> str | None:
    """Record a failed attempt; returns `retryable`, `discarded`, or None if not ours."""
    row = core.one(queries.FAIL, zaap_id=zaap_id, worker_id=worker_id, error=error, permanent=permanent,
                   backoff_ms=round(backoff * 1000), **core.route.params())
    return row["status"] if row else None


def snooze(core: Core, zaap_id: str, worker_id: UUID, delay: float, reason: str) -> bool:
    """Not connected: put the head back (no attempt used) and look again after `delay`."""
    row = core.one(queries.SNOOZE, zaap_id=zaap_id, worker_id=worker_id, delay_ms=round(delay * 1000),
                   reason=reason, **core.route.params())
    return bool(row and row["ok"])


def backoff(core: Core, attempts: int) -> float:
    """Seconds before the next attempt: exponential from RETRY_MIN_BACKOFF, capped at the max."""
    low, high = core.settings.message_queue_retry_min_backoff, core.settings.message_queue_retry_max_backoff
    return float(min(low * 2 ** attempts, high))
