"""Rescue the messages of dead workers (I5): only workers whose broker heartbeat expired while
this process watched (it had continuous database access for longer than the TTL: an outage is
not a death).

A slow but live worker keeps heartbeating and is never rescued; a hung WhatsApp call is bounded
by `MESSAGE_QUEUE_JOB_TIMEOUT` instead. `running` messages go again; `sending` ones follow
`MESSAGE_QUEUE_RESEND_UNCERTAIN` (resend, or discard with the reason). Instances whose session
holder died are marked disconnected first.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from service.core import maintenance
from service.core.context import Core
from workers import counters

logger = logging.getLogger("wmq.maintenance.rescuer")


def run(core: Core, conn: psycopg.Connection[Any], *, judge: bool = True) -> int:
    """`judge`: this process may take a stale heartbeat for a dead worker (workers/liveness.py)."""
    if judge:
        for row in maintenance.release_dead_sessions(core, conn):
            logger.warning("whatsapp session of a dead worker released", extra={"instance_id": str(row["id"])})
    rescued = maintenance.rescue(core, conn, judge=judge)
    for row in rescued:
        again = row["to_status"] != "discarded"
        counters.RESCUED.labels("again" if again else "discarded").inc()
        if again and row["from_status"] == "sending":  # it may have reached WhatsApp: a resend
            counters.RESENT.inc()
        logger.warning("message of a dead worker rescued", extra={
            "zaap_id": row["zaap_id"], "instance_id": str(row["instance_id"]), "sequence": row["sequence"],
            "from_status": row["from_status"], "status": row["to_status"],
        })
    return len(rescued)
