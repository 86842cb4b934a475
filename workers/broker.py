"""The dramatiq-postgres broker, built with an explicit middleware list (I7: Dramatiq's defaults off).

Left out on purpose: `Retries` (the core retries, keeping the message head), `TimeLimit` (it
raises inside a thread, possibly between a send and its bookkeeping; the transport call has its
own timeout), `AgeLimit` (a message may wait for days), `ShutdownNotifications` (same hazard as
TimeLimit), callbacks, pipelines and results (messages carry ids only).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dramatiq import Message
from dramatiq.middleware import Middleware
from dramatiq_postgres import PostgresBroker
from dramatiq_postgres.broker import PostgresConsumer
from dramatiq_postgres.utils import getconn, raise_connection_error
from psycopg_pool import ConnectionPool

from service.settings import Settings

#: The broker's ack, without its NOTIFY on `dramatiq.<queue>.ack`.
ACK = "DELETE FROM dramatiq.queue WHERE message_id = %s AND queue_name = %s AND state = 'consumed'"

#: The ack of a skipped broker message that is the live dispatch of a message in flight with
#: another worker (the claim said `busy`): put back, not deleted, due again after the TTL, so the
#: message keeps its broker row until its holder completes it (which deletes the row) or is
#: rescued (which withdraws it). Deleting it made the rescuer take the live holder's message for
#: abandoned (issue 11).
PUT_BACK = """
    UPDATE dramatiq.queue
       SET state = 'queued', worker_id = NULL, consumed_at = NULL, mtime = now(),
           available_at = now() + make_interval(secs => %s)
     WHERE message_id = %s AND queue_name = %s AND state = 'consumed'
"""

#: This worker's heartbeat (workers/liveness.py writes it from a thread of its own).
HEARTBEAT = """
    INSERT INTO dramatiq.worker (worker_id, heartbeat_at) VALUES (%s, now())
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()
"""

#: A worker that stops cleanly leaves the table at once: while its heartbeat looked fresh, the
#: others counted it among the live workers for TTL seconds and left the sessions it had handed
#: over unowned (each holding its share of a fleet that still counted the leaver).
LEAVE = "DELETE FROM dramatiq.worker WHERE worker_id = %s"

# The due-time waker's statements (workers/waker.py): a dispatch of a future message NOTIFYs
# `wmq.due` (sql `wmq_dispatch`); the waker sleeps until a queue's next message falls due, then
# sends the NOTIFY the queue's consumers listen to.
LISTEN_DUE = 'LISTEN "wmq.due"'
NEXT_DUE = """
    SELECT EXTRACT(EPOCH FROM min(available_at) - clock_timestamp()) AS wait
      FROM dramatiq.queue WHERE queue_name = %s AND state = 'queued' AND available_at > clock_timestamp()
"""
WAKE_QUEUE = "SELECT pg_notify('dramatiq.' || %s || '.enqueue', '')"


#: What an actor returns when the core has settled its broker message itself (`wmq_complete`
#: deletes the row with the send, in one transaction): its ack has nothing left to delete.
SETTLED = "wmq-settled"
#: How a message's ack ends, kept on the message: "delete" (the default), SETTLED, or PUT_BACK's.
_ACK_ATTRIBUTE = "wmq_ack"
_PUT_BACK = "put-back"


def put_back(message: Message[Any]) -> None:
    """Mark a skipped broker message to be put back rather than deleted by its ack."""
    setattr(message, _ACK_ATTRIBUTE, _PUT_BACK)


class SettledAck(Middleware):
    """Reads what the actor returned: SETTLED marks the message so that `QueueConsumer.ack` skips
    its statement. With `put_back`, the one place that decides what an ack does."""

    def after_process_message(self, broker: Any, message: Message[Any], *, result: object = None,
                              exception: BaseException | None = None) -> None:
        if result == SETTLED:
            setattr(message, _ACK_ATTRIBUTE, SETTLED)


class QueueConsumer(PostgresConsumer):
    """dramatiq-postgres' consumer with a cheaper ack: one statement on an autocommit connection,
    none for a message the core has settled already (its actor returned SETTLED: every sent message).

    The stock ack wraps the same DELETE in BEGIN … COMMIT (three round trips) and NOTIFYs the
    message body on an `.ack` channel that only a results listener would read (results are off
    here); a NOTIFY also makes every commit that carries one take PostgreSQL's notify-queue lock.
    Takes its connection and reports errors as the stock ack does (`getconn`, `raise_connection_error`)."""

    @raise_connection_error
    def ack(self, message: Message[Any]) -> None:
        how = getattr(message, _ACK_ATTRIBUTE, "delete")
        if how != SETTLED:
            conn = getconn(self.pool)
            try:
                if how == _PUT_BACK:
                    conn.execute(PUT_BACK, (self.broker.heartbeat_ttl, message.message_id, message.queue_name))
                else:
                    conn.execute(ACK, (message.message_id, message.queue_name))
            finally:
                self.pool.putconn(conn)
        self.in_processing.discard(message.message_id)
        self.wakeup.set()


class QueueBroker(PostgresBroker):
    """dramatiq-postgres' broker whose per-queue prefetch can change while it runs.

    A prefetch of 0 means the consumer claims nothing: a stopping worker claims nothing more."""

    def __init__(self, *, judge: Callable[[], bool] = lambda: True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.judge = judge
        self.prefetch_limits: dict[str, int] = {}
        self.claiming = True
        self._consumers: dict[str, Any] = {}
        self._prefetch_lock = threading.Lock()

    def maybe_maintenance(self, conn: Any) -> None:
        """The broker's own upkeep (requeueing the messages of workers whose heartbeat is stale)
        only while this process may judge others dead (workers/liveness.py): after an outage
        every heartbeat is stale, and requeueing a live worker's message starts a second send."""
        if self.judge():
            super().maybe_maintenance(conn)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Any:
        with self._prefetch_lock:  # so a limit set meanwhile is never lost
            consumer = QueueConsumer(broker=self, queue_name=queue_name,
                                     prefetch=self.prefetch_limits.get(queue_name, prefetch), timeout=timeout)
            self._consumers[queue_name] = consumer
            return consumer

    def set_prefetch(self, queue_name: str, prefetch: int) -> None:
        """Change a queue's prefetch; once `stop_claiming` ran, only to 0."""
        with self._prefetch_lock:
            if not self.claiming:
                prefetch = 0
            self.prefetch_limits[queue_name] = prefetch
            consumer = self._consumers.get(queue_name)
            if consumer is not None:
                consumer.prefetch = prefetch

    def stop_claiming(self) -> None:
        self.claiming = False
        for queue_name in list(self._consumers):
            self.set_prefetch(queue_name, 0)


def build_broker(pool: ConnectionPool, settings: Settings, middleware: list[Middleware],
                 judge: Callable[[], bool]) -> QueueBroker:
    """A broker on our own pool; poll, heartbeat and upkeep intervals from our settings. Its
    queues are declared once its worker id is known (`declare`)."""
    return QueueBroker(
        judge=judge,
        pool=pool,
        results=False,
        middleware=[*middleware, SettledAck()],
        poll_interval=settings.message_queue_poll_interval,
        heartbeat_interval=settings.message_queue_heartbeat_interval,
        heartbeat_ttl=settings.message_queue_heartbeat_ttl,
        maintenance_interval=settings.message_queue_maintenance_interval,
    )


def declare(broker: QueueBroker, queues: list[str]) -> None:
    for queue in queues:
        broker.declare_queue(queue)
