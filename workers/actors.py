"""The delivery actor: phase 1 shows "typing…", phase 2 sends (DESIGN.md §3.4–3.6).

No thread sleeps through a delay: `delayMessage` waits in the broker (`available_at`), and
`delayTyping` is a second dispatch due when the typing should end. The actor never raises: every
outcome is recorded by the core, which dispatches whatever comes next.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from uuid import UUID

import dramatiq

from service.core import Coordinator
from service.core.models import DELIVER_ACTOR, PRESENCE_ACTOR, Job
from service.settings import Settings
from workers.bookkeeping import persist
from workers.ordering import current_job, settle
from workers.transports import (
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


def presence_for(message_type: str) -> Presence:
    return "recording" if message_type == "audio" else "composing"


def log_context(job: Job) -> dict[str, Any]:
    return {"zaap_id": job.zaap_id, "instance_id": str(job.instance_id), "sequence": job.sequence}


class Deliverer:
    """The body of the `deliver` actor, bound to one worker process's core and transport."""

    def __init__(self, coordinator: Coordinator, transport: Transport, settings: Settings,
                 worker_id: UUID) -> None:
        self.coordinator = coordinator
        self.transport = transport
        self.settings = settings
        self.worker_id = worker_id

    def __call__(self, zaap_id: str, phase: int) -> None:
        try:
            job = current_job()
        except RuntimeError:
            logger.error("deliver ran without a claim (is the ordering middleware installed?)",
                         extra={"zaap_id": zaap_id})
            return
        try:
            self._deliver(job)
        except Exception:  # the actor never raises: record the failure, keep the order
            logger.exception("delivery failed unexpectedly", extra=log_context(job))
            self._fail(job, "internal error", permanent=False)

    def _deliver(self, job: Job) -> None:
        ctx = log_context(job)
        # No connectivity check first: the transport raises InstanceDisconnected when it cannot
        # send, before anything reaches WhatsApp, and the head is snoozed either way.
        try:
            typing = job.delay_typing_ms > 0
            if job.status == "running":  # claimed for the typing phase (the claim decides)
                self.transport.send_presence(job.instance_id, job.phone, presence_for(job.message_type))
                if self.coordinator.start_typing(job.zaap_id, self.worker_id):
                    logger.info("typing", extra={**ctx, "delay_typing_ms": job.delay_typing_ms})
                return
            whatsapp_id = self.transport.send(OutgoingMessage(
                zaap_id=job.zaap_id, instance_id=job.instance_id, phone=job.phone,
                message_type=job.message_type, payload=job.payload,
            ))
        except InstanceDisconnected as error:
            delay = self.settings.message_queue_disconnect_retry_delay
            reason = f"disconnected: {error}"
            persist("the snooze", lambda: self.coordinator.snooze(job.zaap_id, self.worker_id, delay, reason),
                    ctx, time.monotonic() + RECORD_RETRY_SECONDS)
            logger.info("instance disconnected; head snoozed", extra={**ctx, "retry_in_s": delay})
            return
        except PermanentSendError as error:
            self._fail(job, str(error), permanent=True)
            return
        except UncertainSendError as error:
            resend = self.settings.message_queue_resend_uncertain
            detail = "sending again" if resend else "not sent again (MESSAGE_QUEUE_RESEND_UNCERTAIN=false)"
            self._fail(job, f"uncertain: {error}; {detail}", permanent=not resend)
            return
        except Exception as error:
            self._fail(job, f"{type(error).__name__}: {error}", permanent=False)
            return

        if typing:
            try:
                self.transport.send_presence(job.instance_id, job.phone, "paused")
            except Exception:
                logger.warning("could not send paused presence", extra=ctx, exc_info=True)
        self._complete(job, whatsapp_id)

    def _complete(self, job: Job, whatsapp_id: str) -> None:
        """Record the send; on a database error retry the bookkeeping (for as long as this
        process lives: it alone knows the WhatsApp id), never the send."""
        ctx = {**log_context(job), "whatsapp_message_id": whatsapp_id}
        recorded = persist("the send", lambda: self.coordinator.complete(job.zaap_id, self.worker_id, whatsapp_id),
                           ctx, deadline=None)
        if recorded:
            settle()
            logger.info("message sent", extra=ctx)
        else:
            logger.warning("message sent but no longer ours to complete", extra=ctx)

    def _fail(self, job: Job, error: str, *, permanent: bool) -> None:
        settings = self.settings
        backoff = min(
            settings.message_queue_retry_min_backoff * 2 ** job.attempts,
            settings.message_queue_retry_max_backoff,
        )
        ctx = log_context(job)
        status = persist("the failure", lambda: self.coordinator.fail(
            job.zaap_id, self.worker_id, error, permanent=permanent, backoff=backoff),
            ctx, time.monotonic() + RECORD_RETRY_SECONDS)
        logger.warning("send failed", extra={**ctx, "error": error, "status": status})


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
