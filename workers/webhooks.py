"""The webhook poster of a worker process: posts the deliveries the database holds, signed, in
order per instance, on threads of its own.

Its own threads and connections, not Dramatiq's: a receiver that is slow or down holds only
these, never a thread that sends WhatsApp messages. Woken at once by the NOTIFY each delivery
row sends, and every `POLL` seconds for retries that fall due and notifications missed while
reconnecting. Every worker runs one; the instance's row lock (`wmq_webhook_head`) lets one
poster at a time post an instance's deliveries, whichever process it is in.

Signature: `X-WMQ-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the
instance's secret>`; `X-WMQ-Delivery` is the delivery's id (a receiver may see one twice if a
worker dies between the receiver's answer and its record: at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from uuid import UUID

import httpx
import psycopg

from service.core import webhooks
from service.core.context import Core
from service.db import make_pool
from workers import metrics

logger = logging.getLogger("wmq.webhooks")

#: Longest wait between two looks for due deliveries.
POLL = 1.0
LISTEN = "LISTEN wmq_webhooks"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookPoster(threading.Thread):
    def __init__(self, core: Core, database_url: str, *, threads: int, timeout: float, retry_for: float) -> None:
        super().__init__(name="wmq-webhooks", daemon=True)
        self.core = core
        self.database_url = database_url
        self.timeout = timeout
        self.retry_for = retry_for
        self.pool = make_pool(database_url, max_size=threads, name="wmq-webhooks")
        self.posters = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self.http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._busy: set[UUID] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- finding work -----------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    conn.execute(LISTEN)
                    while not self._stopping.is_set():
                        self._dispatch()
                        for _ in conn.notifies(timeout=POLL, stop_after=1):
                            pass
            except Exception:
                logger.warning("webhook poster reconnecting", exc_info=True)
                self._stopping.wait(1.0)

    def _dispatch(self) -> None:
        for instance_id in webhooks.due_instances(self.core):
            with self._lock:
                if instance_id in self._busy:
                    continue
                self._busy.add(instance_id)
            self.posters.submit(self._drain, instance_id)

    # -- posting --------------------------------------------------------------------------------

    def _drain(self, instance_id: UUID) -> None:
        """Post the instance's due deliveries one by one, in order, until none is due."""
        try:
            while not self._stopping.is_set() and self._post_head(instance_id):
                pass
        except Exception:
            logger.warning("webhook delivery failed to record", exc_info=True, extra={"instance_id": str(instance_id)})
        finally:
            with self._lock:
                self._busy.discard(instance_id)

    def _post_head(self, instance_id: UUID) -> bool:
        """Post the instance's next delivery if it is due and free; whether one was posted."""
        with self.pool.connection() as conn, conn.transaction():
            posting = webhooks.head(conn, instance_id)
            if posting is None:
                return False
            row = posting.row
            body = json.dumps(row["body"], separators=(",", ":"), ensure_ascii=False).encode()
            timestamp = int(time.time())
            headers = {"Content-Type": "application/json", "User-Agent": "wmq-webhooks",
                       "X-WMQ-Delivery": str(row["id"]), "X-WMQ-Signature": signature(row["secret"], timestamp, body)}
            status: int | None = None
            try:
                answer = self.http.post(row["url"], content=body, headers=headers)
                status = answer.status_code
                if 200 <= status < 300:
                    posting.done(status)
                    metrics.WEBHOOKS.labels(row["event"], "delivered").inc()
                    logger.info("webhook delivered", extra={"instance_id": str(instance_id), "delivery": row["id"],
                                                            "status": status})
                    return True
                error = f"HTTP {status}: {answer.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            age = (datetime.now(UTC) - row["created_at"]).total_seconds()
            give_up = age >= self.retry_for
            posting.failed(status, error, give_up)
            metrics.WEBHOOKS.labels(row["event"], "given_up" if give_up else "failed").inc()
            logger.warning("webhook not delivered", extra={
                "instance_id": str(instance_id), "delivery": row["id"], "error": error, "given_up": give_up})
            return give_up  # a delivery given up lets the next one go now; one that waits, waits

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=POLL + 1)
        self.posters.shutdown(wait=True, cancel_futures=True)
        self.http.close()
        self.pool.close()
