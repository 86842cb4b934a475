"""The JSON shapes of the API's answers: a message, an instance, a queue entry (ours and Z-API's
keys), in one place for every route and the dashboard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.core.models import Instance, QueuedMessage


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def message_json(job: QueuedMessage) -> dict[str, Any]:
    return {
        "zaapId": job.zaap_id,
        "messageId": job.whatsapp_message_id or job.zaap_id,
        "id": job.zaap_id,
        "instanceId": str(job.instance_id),
        "sequence": job.sequence,
        "status": job.status,
        "messageType": job.message_type,
        "phone": job.phone,
        "content": job.payload,
        "delayMessage": job.delay_message_ms / 1000,
        "delayTyping": job.delay_typing_ms / 1000,
        "scheduledAt": iso(job.scheduled_at),
        "availableAt": iso(job.available_at),
        "position": job.position,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "lastError": job.last_error,
        "whatsappMessageId": job.whatsapp_message_id,
        "enqueuedAt": iso(job.enqueued_at),
        "startedAt": iso(job.started_at),
        "sentAt": iso(job.sent_at),
        "finishedAt": iso(job.finished_at),
        "deliveredAt": iso(job.delivered_at),
        "readAt": iso(job.read_at),
        "playedAt": iso(job.played_at),
    }


def instance_json(instance: Instance, *, with_token: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(instance.id),
        "name": instance.name,
        "transport": instance.transport,
        "paused": instance.paused,
        "connectionState": instance.connection_state,
        "createdAt": iso(instance.created_at),
    }
    if with_token:
        data["token"] = instance.token
        data["clientToken"] = instance.client_token
    return data


def queue_entry(job: QueuedMessage) -> dict[str, Any]:
    """A message as the queue routes list it: ours, and the keys of Z-API's queue answer."""
    text = job.payload.get("message") or job.payload.get("caption") or job.payload.get("title") or ""
    return {
        **message_json(job),
        "_id": job.zaap_id, "ZaapId": job.zaap_id, "MessageId": job.whatsapp_message_id or job.zaap_id,
        "InstanceId": str(job.instance_id), "Phone": job.phone, "Message": text if isinstance(text, str) else "",
        "DelayMessage": job.delay_message_ms // 1000, "DelayTyping": job.delay_typing_ms // 1000,
        "Created": int(job.enqueued_at.timestamp() * 1000), "CreatedAt": iso(job.enqueued_at), "IsTrial": False,
    }
