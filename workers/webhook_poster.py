"""The webhook poster of a worker process: posts the deliveries the database holds, signed, in
order per instance, on threads of its own, through the one guarded client (service/outbound.py).

Its own threads and connections, not Dramatiq's: a receiver that is slow, down or hostile holds
only these, never a thread that sends WhatsApp messages. Woken at once by the NOTIFY each delivery
row sends, and every `POLL` seconds for retries that fall due and notifications missed while
reconnecting.

Each attempt is claimed (counted, `posting_since` set) in a short transaction before its POST
and recorded after it: no transaction or row lock is held while a receiver answers, and a worker
that dies mid-post leaves an attempt counted (service/core/webhooks.py `retry_policy`). A receiver
(scheme, host, port) gets at most `WEBHOOK_RECEIVER_CONCURRENCY` posts in flight from one worker,
and one that keeps failing is backed off by a circuit; the due query leaves such receivers out,
so a slow or dead receiver delays only the instances that post to it.

Signature: `X-WMQ-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256 of "<t>.<delivery id>.<body>"
with the instance's secret>` (a second `v2` with the previous secret for a while after a
rotation); `X-WMQ-Delivery` is the delivery's id (a receiver may see one twice if a worker dies
between the receiver's answer and its record: at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from service import outbound
from service.core import webhooks
from service.core.context import Core
from service.db.pools import make_pool
from workers import counters
from workers.background import Background, Connection

logger = logging.getLogger("wmq.webhooks")

#: Longest wait between two looks for due deliveries.
POLL = 1.0
LISTEN = "LISTEN wmq_webhooks"
#: The most of a receiver's answer read (never shown, never decoded: the status is the answer).
ANSWER_BYTES = 4096
#: A claimed delivery is held (not due) for the post's deadline and this margin (the outcome's
#: record); a worker that dies mid-post leaves it to be taken up again after that.
HOLD_MARGIN = 5.0
#: Consecutive failures of a receiver after which its circuit opens, and how long it stays open
#: (doubling with each further failure, to `CIRCUIT_MAX`).
CIRCUIT_AFTER = 3
CIRCUIT_OPEN = 5.0
CIRCUIT_MAX = 300.0
#: Posters claim through a small pool: each holds a connection for a statement, never for a post.
POOL_SIZE = 4


def signature(secrets: Iterable[str], timestamp: int, delivery_id: int, body: bytes) -> str:
    """`t=…,v2=…[,v2=…]`: one HMAC per valid secret over the time, the delivery id and the body."""
    signed = f"{timestamp}.{delivery_id}.".encode() + body
    macs = [hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest() for secret in secrets]
    return ",".join([f"t={timestamp}", *(f"v2={mac}" for mac in macs)])


@dataclass
class _Receiver:
    in_flight: int = 0
    failures: int = 0
    open_until: float = 0.0


class Receivers:
    """Per receiver (origin): posts in flight (capped) and a circuit that backs a failing one off."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._known: dict[str, _Receiver] = {}

    def blocked(self) -> list[str]:
        """Receivers that may take no new post now: at their cap, or their circuit open."""
        now = time.monotonic()
        with self._lock:
            return [origin for origin, r in self._known.items()
                    if r.in_flight >= self.concurrency or r.open_until > now]

    def acquire(self, origin: str) -> bool:
        now = time.monotonic()
        with self._lock:
            receiver = self._known.setdefault(origin, _Receiver())
            if receiver.in_flight >= self.concurrency or receiver.open_until > now:
                return False
            receiver.in_flight += 1
            return True

    def release(self, origin: str, *, ok: bool | None) -> None:
        """`ok`: the receiver answered (True), failed as a receiver (False), or neither (None)."""
        with self._lock:
            receiver = self._known[origin]
            receiver.in_flight -= 1
            if ok:
                receiver.failures, receiver.open_until = 0, 0.0
            elif ok is False:
                receiver.failures += 1
                if receiver.failures >= CIRCUIT_AFTER:
                    wait = min(CIRCUIT_OPEN * 2 ** (receiver.failures - CIRCUIT_AFTER), CIRCUIT_MAX)
                    receiver.open_until = time.monotonic() + wait
            if receiver.in_flight == 0 and receiver.failures == 0:
                del self._known[origin]  # bounded: only receivers in use or failing are kept


class WebhookPoster(Background):
    def __init__(self, core: Core, database_url: str, *, threads: int, timeout: float, retry_for: float,
                 receiver_concurrency: int = 4) -> None:
        # Its rounds run in workers/background.py's loop, on a connection of its own that LISTENs.
        super().__init__("wmq-webhooks", logger=logger, conninfo=database_url, listen=LISTEN, stop_timeout=POLL + 1)
        self.database_url = database_url
        self.timeout = timeout
        self.retry_for = retry_for
        self.pool = make_pool(database_url, max_size=min(threads, POOL_SIZE), name="wmq-webhooks")
        self.core = Core(pool=self.pool, settings=core.settings)
        self.posters = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self.client = outbound.Client()
        self.receivers = Receivers(receiver_concurrency)
        self._busy: set[UUID] = set()
        self._lock = threading.Lock()

    # -- finding work -----------------------------------------------------------------------

    def round(self, conn: Connection | None) -> float:
        """Hand every due instance to a poster; look again after `POLL`, or at a NOTIFY."""
        self._dispatch()
        return POLL

    def _dispatch(self) -> None:
        with self._lock:
            busy = list(self._busy)
        for instance_id, origin in webhooks.due(self.core, busy=busy, blocked=self.receivers.blocked()):
            if not self.receivers.acquire(origin):
                continue  # taken to its cap since the query: left for a later round
            with self._lock:
                self._busy.add(instance_id)
            self.posters.submit(self._post, instance_id, origin)

    # -- posting --------------------------------------------------------------------------------

    def _post(self, instance_id: UUID, origin: str) -> None:
        """Claim the instance's next delivery, post it, record the outcome."""
        ok: bool | None = None
        try:
            claimed = webhooks.claim(self.core, instance_id, self.timeout + HOLD_MARGIN)
            if claimed is not None:
                ok = self._attempt(instance_id, claimed)
        except Exception:
            logger.warning("webhook delivery failed to record", exc_info=True, extra={"instance_id": str(instance_id)})
        finally:
            self.receivers.release(origin, ok=ok)
            with self._lock:
                self._busy.discard(instance_id)

    def _attempt(self, instance_id: UUID, row: dict[str, Any]) -> bool | None:
        """Post one claimed delivery; whether the receiver answered (None: not posted)."""
        log = {"instance_id": str(instance_id), "delivery": row["id"]}
        age = (datetime.now(UTC) - row["created_at"]).total_seconds()
        give_up, backoff, why = webhooks.retry_policy(attempts=row["attempts"], age_s=age, retry_for_s=self.retry_for,
                                                      unfinished=row["unfinished_attempts"])
        if row["unfinished_attempts"] >= webhooks.MAX_UNFINISHED_ATTEMPTS:  # it would kill this worker too
            webhooks.failed(self.core, row, status=None, error=why, backoff_s=backoff, give_up=True)
            counters.WEBHOOKS.labels(row["event"], "given_up").inc()
            logger.warning("webhook given up", extra={**log, "error": why})
            return None
        body = json.dumps(row["body"], separators=(",", ":"), ensure_ascii=False).encode()
        secrets = [row["secret"], *([row["previous_secret"]] if row["previous_secret"] else [])]
        headers = {"Content-Type": "application/json", "User-Agent": "wmq-webhooks",
                   "X-WMQ-Delivery": str(row["id"]),
                   "X-WMQ-Signature": signature(secrets, int(time.time()), row["id"], body)}
        status: int | None = None
        try:
            answer = self.client.post(row["url"], content=body, headers=headers, timeout=self.timeout,
                                      max_bytes=ANSWER_BYTES)
            status = answer.status
            if 200 <= status < 300:
                webhooks.delivered(self.core, row, status)
                counters.WEBHOOKS.labels(row["event"], "delivered").inc()
                logger.info("webhook delivered", extra={**log, "status": status})
                return True
            error, answered = f"HTTP {status}", status < 500
        except outbound.OutboundError as failure:  # in our words: never the receiver's text
            error, answered = failure.reason, False
        webhooks.failed(self.core, row, status=status, error=f"{error}; {why}" if give_up else error,
                        backoff_s=backoff, give_up=give_up)
        counters.WEBHOOKS.labels(row["event"], "given_up" if give_up else "failed").inc()
        logger.warning("webhook not delivered", extra={**log, "error": error, "given_up": give_up})
        return answered

    def stop(self) -> None:
        super().stop()
        self.posters.shutdown(wait=True, cancel_futures=True)
        self.client.close()
        self.pool.close()
