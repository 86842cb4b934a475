"""The dramatiq-postgres broker, built with an explicit middleware list (I7: Dramatiq's defaults off).

Left out on purpose: `Retries` (the core retries, keeping the message head), `TimeLimit` (it
raises inside a thread, possibly between a send and its bookkeeping; the transport call has its
own timeout), `AgeLimit` (a message may wait for days), `ShutdownNotifications` (same hazard as
TimeLimit), callbacks, pipelines and results (messages carry ids only).
"""

from __future__ import annotations

import threading
from typing import Any

from dramatiq import Message
from dramatiq.middleware import Middleware
from dramatiq_postgres import PostgresBroker
from dramatiq_postgres.broker import PostgresConsumer
from dramatiq_postgres.utils import getconn, raise_connection_error
from psycopg_pool import ConnectionPool

from service.core.routing import BrokerQueue
from service.settings import Settings

#: The broker's ack, without its NOTIFY on `dramatiq.<queue>.ack`.
ACK = "DELETE FROM dramatiq.queue WHERE message_id = %s AND queue_name = %s AND state = 'consumed'"

# The due-time waker's statements (workers/waker.py): a dispatch of a future message NOTIFYs
# `wmq.due` (sql `wmq_dispatch`); the waker sleeps until a queue's next message falls due, then
# sends the NOTIFY the queue's consumers listen to.
LISTEN_DUE = 'LISTEN "wmq.due"'
NEXT_DUE = """
    SELECT EXTRACT(EPOCH FROM min(available_at) - clock_timestamp()) AS wait
      FROM dramatiq.queue WHERE queue_name = %s AND state = 'queued' AND available_at > clock_timestamp()
"""
WAKE_QUEUE = "SELECT pg_notify('dramatiq.' || %s || '.enqueue', '')"


class Settled:
    """What an actor returns when the core deleted its broker message already (`wmq_complete`
    settles the broker message with the send, in one transaction): its ack has nothing left to do."""


SETTLED = Settled()
_SETTLED_ATTRIBUTE = "wmq_settled"


class SettledAck(Middleware):
    """Marks a message whose actor returned `SETTLED`, so `QueueConsumer.ack` skips its statement.
    The one place that decides whether an ack runs a statement."""

    def after_process_message(self, broker: Any, message: Message[Any], *, result: object = None,
                              exception: BaseException | None = None) -> None:
        if result is SETTLED:
            setattr(message, _SETTLED_ATTRIBUTE, True)


class QueueConsumer(PostgresConsumer):
    """dramatiq-postgres' consumer with a cheaper ack: one statement on an autocommit connection,
    none for a message the core has settled already (`SETTLED`: every sent message).

    The stock ack wraps the same DELETE in BEGIN … COMMIT (three round trips) and NOTIFYs the
    message body on an `.ack` channel that only a results listener would read (results are off
    here); a NOTIFY also makes every commit that carries one take PostgreSQL's notify-queue lock.
    Takes its connection and reports errors as the stock ack does (`getconn`, `raise_connection_error`)."""

    @raise_connection_error
    def ack(self, message: Message[Any]) -> None:
        if not getattr(message, _SETTLED_ATTRIBUTE, False):
            conn = getconn(self.pool)
            try:
                conn.execute(ACK, (message.message_id, message.queue_name))
            finally:
                self.pool.putconn(conn)
        self.in_processing.discard(message.message_id)
        self.wakeup.set()


class QueueBroker(PostgresBroker):
    """dramatiq-postgres' broker whose per-queue prefetch can change while it runs.

    A prefetch of 0 means the consumer claims nothing: the sessions queue is consumed only by
    the worker holding the WhatsApp sessions, and a stopping worker claims nothing more."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefetch_limits: dict[str, int] = {}
        self.claiming = True
        self._consumers: dict[str, Any] = {}
        self._prefetch_lock = threading.Lock()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> Any:
        with self._prefetch_lock:  # so a limit set meanwhile is never lost
            consumer = QueueConsumer(broker=self, queue_name=queue_name,
                                     prefetch=self.prefetch_limits.get(queue_name, prefetch), timeout=timeout)
            self._consumers[queue_name] = consumer
            return consumer

    def set_prefetch(self, queue_name: str, prefetch: int) -> None:
        """Change a queue's prefetch; once `stop_claiming` ran, only to 0 (a stopping worker that
        then takes the WhatsApp sessions must not start claiming their messages)."""
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
                 queues: list[BrokerQueue]) -> QueueBroker:
    """A broker on our own pool; poll, heartbeat and upkeep intervals from our settings. Every
    queue is declared; a session-bound one with a prefetch of 0 until this worker holds the
    sessions (`hold_sessions`)."""
    broker = QueueBroker(
        pool=pool,
        results=False,
        middleware=[*middleware, SettledAck()],
        poll_interval=settings.message_queue_poll_interval,
        heartbeat_interval=settings.message_queue_heartbeat_interval,
        heartbeat_ttl=settings.message_queue_heartbeat_ttl,
        maintenance_interval=settings.message_queue_maintenance_interval,
    )
    for queue in queues:
        if queue.session_bound:
            broker.prefetch_limits[queue.name] = 0
        broker.declare_queue(queue.name)
    return broker


def hold_sessions(broker: QueueBroker, queues: list[BrokerQueue], threads: int, owner: bool) -> None:
    """Consume the session-bound queues only while this worker holds the WhatsApp sessions."""
    for queue in queues:
        if queue.session_bound:
            broker.set_prefetch(queue.name, threads if owner else 0)
