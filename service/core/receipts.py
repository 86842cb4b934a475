"""WhatsApp's receipts for sent messages (delivered, read, played), recorded on the messages
(service/sql/functions/45_receipts.sql): by a session's owner as the phone reports them, or by
the simulator's route."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from service.core import queries
from service.core.context import Core


def record_receipt(core: Core, instance_id: UUID, message_ids: list[str], kind: str,
                   at: datetime | None = None) -> int:
    """WhatsApp's receipt (`delivered`, `read`, `played`) for messages the instance sent; how many
    messages moved (each keeps the first of each kind)."""
    row = core.one(queries.RECORD_RECEIPT, instance_id=instance_id, ids=message_ids, kind=kind,
                   at=at or datetime.now(UTC))
    return int(row["moved"]) if row else 0
