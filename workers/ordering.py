"""The ordering middleware: a broker message runs only if it is its instance's live dispatch.

Before the actor runs, the message is claimed with one atomic statement (rule R3). Zero rows
means the broker message is stale (re-dispatched, cancelled, already done, or not the head):
it is skipped, so per-instance order never depends on what the broker delivers.
"""

from __future__ import annotations

import logging
import threading
import time
from uuid import UUID

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage

from service.core import Coordinator
from service.core.models import DELIVER_ACTOR, Job
from workers.bookkeeping import persist
from workers.broker import SETTLED

logger = logging.getLogger("wmq.ordering")

_current = threading.local()

#: How long a claim that fails on a database error is retried before the message is skipped
#: (the maintenance loop re-dispatches a head whose broker message was lost).
CLAIM_RETRY_SECONDS = 30.0


class StaleDispatch(SkipMessage):
    """The broker message is not the live dispatch of its message: skip it."""


def current_job() -> Job:
    """The message claimed for the broker message this thread is processing."""
    job: Job | None = getattr(_current, "job", None)
    if job is None:
        raise RuntimeError("no claimed message on this thread")
    return job


def settle() -> None:
    """The core deleted this thread's broker message with the send (`wmq_complete`): the ack
    that follows skips its statement."""
    _current.settled = True


class OrderingMiddleware(Middleware):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        _current.settled = False
        if message.actor_name != DELIVER_ACTOR:
            return  # a presence carries no message: nothing to claim
        zaap_id = message.args[0]
        worker_id = UUID(broker.worker_id)  # type: ignore[attr-defined]
        job = persist("the claim", lambda: self.coordinator.claim(zaap_id, UUID(message.message_id), worker_id),
                      {"zaap_id": zaap_id}, time.monotonic() + CLAIM_RETRY_SECONDS)
        if job is None:
            logger.debug("stale dispatch skipped", extra={"zaap_id": zaap_id})
            raise StaleDispatch()
        _current.job = job

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message,
                              *, result: object = None, exception: BaseException | None = None) -> None:
        if getattr(_current, "settled", False):
            setattr(message, SETTLED, True)
        _current.job = None

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        _current.job = None
