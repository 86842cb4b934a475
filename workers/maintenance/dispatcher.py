"""Dispatch again the heads that should be in the broker and are not: a consumed message whose
claim failed on a database error, a dispatch lost some other way. Cheap when nothing is wrong:
one indexed scan of pending messages."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from service.core import maintenance
from service.core.context import Core

logger = logging.getLogger("wmq.maintenance.dispatcher")


def run(core: Core, conn: psycopg.Connection[Any]) -> int:
    redispatched = maintenance.redispatch_orphans(core, conn)
    for row in redispatched:
        logger.warning("head without a broker message dispatched again", extra={
            "zaap_id": row["zaap_id"], "instance_id": str(row["instance_id"]), "sequence": row["sequence"],
            "status": row["status"],
        })
    return len(redispatched)
