"""The delivery actor: a `typing` claim shows "typing…", a `send` claim sends.

No thread sleeps through a delay: `delayMessage` waits in the broker (`available_at`), and
`delayTyping` is a second dispatch due when the typing should end. The actor never raises: every
outcome is recorded by the core (service/core/transitions.py), which dispatches whatever comes
next.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from uuid import UUID

import dramatiq

from service.core import transitions
from service.core.context import Core
from service.core.message_types import presence_for
from service.core.models import Claimed
from service.core.routing import DELIVER_ACTOR, PRESENCE_ACTOR
from workers import counters
from workers.bookkeeping import persist
from workers.broker import SETTLED
from workers.claim_guard import ClaimGuard, guard_bound
from workers.ordering import current_claim
from workers.transports import (
    ClaimLost,
    InstanceDisconnected,
    OutgoingMessage,
    PermanentSendError,
    Presence,
    Transport,
    UncertainSendError,
)

logger = logging.getLogger("wmq.deliver")

#: How long the record of a failure or a snooze is retried in-process on database errors. Past
#: that the broker message is acked, and the rescuer finds the message with no broker message.
RECORD_RETRY_SECONDS = 120.0


class Deliverer:
    """The body of the `deliver` actor, bound to one worker process's core and transport."""

    def __init__(self, core: Core, transport: Transport, worker_id: UUID) -> None:
        self.core = core
        self.transport = transport
        self.settings = core.settings
        self.worker_id = worker_id
        self.guard_bound = guard_bound(core.settings)

    def __call__(self, zaap_id: str, phase: int) -> str | None:
        """Deliver the claimed message; SETTLED when its send was recorded (the core deleted its
        broker message: the ack has nothing to do), else None."""
        try:
            claim = current_claim()
        except RuntimeError:
            logger.error("deliver ran without a claim (is the ordering middleware installed?)",
                         extra={"zaap_id": zaap_id})
            return None
        try:
            return self._deliver(claim)
        except Exception:  # the actor never raises: record the failure, keep the order
            logger.exception("delivery failed unexpectedly", extra=claim.log_context())
            self._fail(claim, "internal error", permanent=False)
            return None

    def _deliver(self, claim: Claimed) -> str | None:
        ctx = claim.log_context()
        logger.info("message claimed", extra={**ctx, "status": "running" if claim.granted == "typing" else "sending",
                                               "late_s": round(claim.late_s, 3)})
        if claim.first_start:
            counters.LATENESS.labels(claim.message_type).observe(max(0.0, claim.late_s))
        # No connectivity check first: the transport raises InstanceDisconnected when it cannot
        # send, before anything reaches WhatsApp, and the head is snoozed either way.
        try:
            if claim.granted == "typing":
                self.transport.send_presence(claim.instance_id, claim.phone, presence_for(claim.message_type))
                if transitions.start_typing(self.core, claim.zaap_id, self.worker_id):
                    logger.info("typing", extra={**ctx, "status": "typing", "delay_typing_ms": claim.delay_typing_ms})
                return
            with counters.CALL_SECONDS.labels(claim.message_type).time():
                whatsapp_id = self.transport.send(OutgoingMessage(
                    zaap_id=claim.zaap_id, instance_id=claim.instance_id, phone=claim.phone,
                    message_type=claim.message_type, payload=claim.payload,
                    before_write=ClaimGuard(self.core, claim, self.worker_id, self.guard_bound,
                                            retry_for=self.settings.message_queue_job_timeout / 3),
                ))
        except InstanceDisconnected as error:
            counters.SNOOZED.labels(claim.message_type).inc()
            delay = self.settings.message_queue_disconnect_retry_delay
            # Not only a lost connection waits: WhatsApp's reach-out time-lock, a held bot tag, an
            # earlier call still out (workers/transports): the history says which, after "waiting".
            reason = f"waiting: {error}"
            persist("the snooze", lambda: transitions.snooze(self.core, claim.zaap_id, self.worker_id, delay, reason),
                    ctx, time.monotonic() + RECORD_RETRY_SECONDS)
            logger.info("instance disconnected; head snoozed",
                        extra={**ctx, "status": "scheduled", "retry_in_s": delay})
            return None
        except ClaimLost:
            # This worker stood still and the message went on without it (claim_guard.py): nothing
            # was written, and there is nothing of it left to record here.
            counters.FAILED.labels(claim.message_type, "not ours").inc()
            return None
        except PermanentSendError as error:
            self._fail(claim, str(error), permanent=True)
            return None
        except UncertainSendError as error:
            self._uncertain(claim, error)
            return None
        except Exception as error:
            self._fail(claim, f"{type(error).__name__}: {error}", permanent=False)
            return None

        # Completion first, presence after: the send is recorded (and the next head dispatched)
        # before anything else can fail or take time; the "typing…" then ends with `paused`.
        settled = self._complete(claim, whatsapp_id)
        if claim.delay_typing_ms > 0:
            try:
                self.transport.send_presence(claim.instance_id, claim.phone, "paused")
            except Exception:
                logger.warning("could not send paused presence", extra=ctx, exc_info=True)
        return settled

    def _complete(self, claim: Claimed, whatsapp_id: str) -> str | None:
        """Record the send; on a database error retry the bookkeeping (for as long as this
        process lives: it alone knows the WhatsApp id), never the send."""
        ctx = {**claim.log_context(), "whatsapp_message_id": whatsapp_id}
        recorded = persist("the send", lambda: transitions.complete(
            self.core, claim.zaap_id, self.worker_id, whatsapp_id, dispatch_id=claim.dispatch_id),
            ctx, deadline=None)
        if not recorded:
            logger.warning("message sent but no longer ours to complete", extra=ctx)
            return None
        counters.SENT.labels(claim.message_type).inc()
        since_accept = claim.accepted_s + time.monotonic() - claim.claimed_at
        counters.ACCEPT_TO_SEND.labels(claim.message_type).observe(since_accept)
        logger.info("message sent", extra={**ctx, "status": "completed"})
        return SETTLED

    def _uncertain(self, claim: Claimed, error: UncertainSendError) -> None:
        """The call did not answer in time. If it may still answer (`error.late`), the message is
        not sent again before it no longer can, and an id it answers with meanwhile completes the
        message: a late success is recorded once, never sent twice (issue 21)."""
        resend = self.settings.message_queue_resend_uncertain
        backoff = transitions.backoff(self.core, claim.attempts)
        if error.late is not None and error.late_within > 0:
            backoff = max(backoff, error.late_within)
            detail = (f"sending again unless it answers within {error.late_within:.0f}s" if resend
                      else "not sent again (MESSAGE_QUEUE_RESEND_UNCERTAIN=false) unless it answers late")
        else:
            detail = "sending again" if resend else "not sent again (MESSAGE_QUEUE_RESEND_UNCERTAIN=false)"
        if self._fail(claim, f"uncertain: {error}; {detail}", permanent=not resend, backoff=backoff) == "retryable":
            counters.RESENT.inc()
        if error.late is not None:
            until = time.monotonic() + error.late_within
            error.late.add_done_callback(lambda call: self._late_answer(claim, call, until))

    def _late_answer(self, claim: Claimed, call: Future[str], until: float) -> None:
        """The abandoned call returned (on its own thread): an id completes the message unless its
        retry has been claimed meanwhile (`wmq_complete` under the claim's dispatch: the database
        says, not this clock); an error changes nothing (the retry comes as recorded)."""
        ctx = claim.log_context()
        if call.cancelled() or call.exception() is not None:
            logger.info("the abandoned call failed late; the retry stands", extra={
                **ctx, "error": str(call.exception()) if not call.cancelled() else "cancelled"})
            return
        if time.monotonic() > until:
            logger.warning("the abandoned call answered after its bound", extra={
                **ctx, "whatsapp_message_id": call.result()})
        threading.Thread(target=self._complete, args=(claim, call.result()), daemon=True,
                         name=f"late-{claim.zaap_id}").start()

    def _fail(self, claim: Claimed, error: str, *, permanent: bool, backoff: float | None = None) -> str | None:
        ctx = claim.log_context()
        if backoff is None:
            backoff = transitions.backoff(self.core, claim.attempts)
        status = persist("the failure", lambda: transitions.fail(
            self.core, claim.zaap_id, self.worker_id, error, permanent=permanent, backoff=backoff),
            ctx, time.monotonic() + RECORD_RETRY_SECONDS)
        counters.FAILED.labels(claim.message_type, str(status or "unrecorded")).inc()
        logger.warning("send failed", extra={**ctx, "error": error, "status": status})
        return status


class PresenceSender:
    """The body of the `presence` actor: show a presence with no message (a cancelled
    message's typing ends with `paused`). Best effort: a failure is logged, never retried."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def __call__(self, instance_id: str, phone: str, presence: Presence) -> None:
        try:
            self.transport.send_presence(UUID(instance_id), phone, presence)
        except Exception:
            logger.warning("presence not shown", extra={"instance_id": instance_id, "presence": presence},
                           exc_info=True)


def declare_actors(broker: dramatiq.Broker, deliverer: Deliverer, presence: PresenceSender,
                   queue_name: str) -> None:
    dramatiq.actor(deliverer, actor_name=DELIVER_ACTOR, queue_name=queue_name, broker=broker)
    dramatiq.actor(presence, actor_name=PRESENCE_ACTOR, queue_name=queue_name, broker=broker)
