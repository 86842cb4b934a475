"""The ordering middleware: a broker message runs only if it is its message's live dispatch.

Before the actor runs, the message is claimed with one atomic statement (I4, sql `wmq_claim`).
Zero rows means the broker message is stale (re-dispatched, cancelled, already done, or not the
head): it is skipped, so per-instance order never depends on what the broker delivers. The
claim, with the phase it granted, is this thread's current claim until the message is processed
(`current_claim`, in the spirit of Dramatiq's `CurrentMessage`).
"""

from __future__ import annotations

import logging
import threading
import time
from uuid import UUID

import dramatiq
from dramatiq.middleware import Middleware, SkipMessage

from service.core import transitions
from service.core.context import Core
from service.core.models import Claimed
from service.core.routing import DELIVER_ACTOR
from workers.bookkeeping import persist
from workers.broker import put_back

logger = logging.getLogger("wmq.ordering")

_current = threading.local()

#: How long a claim that fails on a database error is retried before the message is skipped
#: (the maintenance loop re-dispatches a head whose broker message was lost).
CLAIM_RETRY_SECONDS = 30.0


class StaleDispatch(SkipMessage):
    """The broker message is not the live dispatch of its message: skip it."""


def current_claim() -> Claimed:
    """The claim of the broker message this thread is processing."""
    claimed: Claimed | None = getattr(_current, "claim", None)
    if claimed is None:
        raise RuntimeError("no claimed message on this thread")
    return claimed


class OrderingMiddleware(Middleware):
    def __init__(self, core: Core) -> None:
        self.core = core
        #: Dispatches being processed by a thread of this process: the claim is idempotent for
        #: this worker (a retried claim whose first answer was lost gets its grant back), so a
        #: second delivery of the same broker message to this process must not run beside the first.
        self._active: set[UUID] = set()
        self._lock = threading.Lock()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        _current.claim = None
        if message.actor_name != DELIVER_ACTOR:
            return  # a presence carries no message: nothing to claim
        zaap_id = message.args[0]
        dispatch_id = UUID(message.message_id)
        worker_id = UUID(broker.worker_id)  # type: ignore[attr-defined]
        claimed = persist(
            "the claim", lambda: transitions.claim(self.core, zaap_id, dispatch_id, worker_id),
            {"zaap_id": zaap_id}, time.monotonic() + CLAIM_RETRY_SECONDS)
        with self._lock:
            busy = claimed is not None and (claimed.granted == "busy" or dispatch_id in self._active)
            if claimed is not None and not busy:
                self._active.add(dispatch_id)
        if claimed is None:
            logger.debug("stale dispatch skipped", extra={"zaap_id": zaap_id})
            raise StaleDispatch()
        if busy:
            # The live dispatch of a message in flight elsewhere: its broker row must stay.
            logger.info("dispatch in flight elsewhere; put back", extra=claimed.log_context())
            put_back(message)
            raise StaleDispatch()
        _current.claim = claimed

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message,
                              *, result: object = None, exception: BaseException | None = None) -> None:
        self._done(message)

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        claimed = getattr(_current, "claim", None)
        if claimed is not None:
            self._done(message)
        _current.claim = None

    def _done(self, message: dramatiq.Message) -> None:
        _current.claim = None
        with self._lock:
            self._active.discard(UUID(message.message_id))
