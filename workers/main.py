"""One worker process: a Dramatiq worker on the Postgres broker, stopped cleanly by a signal.

Run with `wmq worker`. Threads (`MESSAGE_QUEUE_WORKER_THREADS`) serve that many instances at
once; each instance still has at most one message in flight (I4). This module is the worker's
composition root: the core, the broker, the transports and the maintenance tasks meet here.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from uuid import UUID

import dramatiq

from service.core import instances, routing
from service.core.context import Core
from service.core.session_host import SessionHost
from service.db.pools import make_pool
from service.settings import Settings
from workers import counters
from workers.actors import Deliverer, PresenceSender, declare_actors
from workers.broker import build_broker, declare
from workers.leases import LeaseKeeper
from workers.liveness import Heartbeat
from workers.maintenance import MaintenanceLoop, Task, core_tasks
from workers.ordering import OrderingMiddleware
from workers.transports import TRANSPORTS, RoutingTransport, Wiring
from workers.waker import DueTimeWaker
from workers.webhook_poster import WebhookPoster

logger = logging.getLogger("wmq.worker")


def run_worker(settings: Settings, database_url: str) -> int:
    """Serve the queue until SIGTERM or SIGINT; returns the exit code."""
    if not settings.message_queue_enabled:
        logger.warning("MESSAGE_QUEUE_ENABLED is false: this worker sends nothing and exits")
        return 0
    threads = settings.message_queue_worker_threads
    # Held for good: two per consumed queue (the shared one and this worker's own) and the
    # notifier's; then one at a time per thread (a claim, a transition, the simulator's record),
    # and the lease keeper's and the maintenance loop's. With the default 32 threads: 42, so that
    # an API (up to 40) and a worker fit PostgreSQL's default 100 connections.
    pool = make_pool(database_url, max_size=threads + 10, name="wmq-worker")
    core = Core(pool, settings)
    heartbeat: Heartbeat | None = None

    def may_judge() -> bool:
        return heartbeat is not None and heartbeat.may_judge()

    broker = build_broker(pool, settings, [OrderingMiddleware(core)], judge=may_judge)
    dramatiq.set_broker(broker)
    worker_id = UUID(broker.worker_id)
    queues = routing.queues(core, worker_id)
    declare(broker, queues)
    heartbeat = Heartbeat(database_url, worker_id, interval=settings.message_queue_heartbeat_interval,
                          ttl=settings.message_queue_heartbeat_ttl, alive_file=settings.worker_alive_file)

    sessions = SessionHost(core, worker_id)
    leases = LeaseKeeper(sessions, interval=settings.message_queue_lease_interval, judge=may_judge)
    wiring = Wiring(
        pool=pool, settings=settings, database_url=database_url, worker_id=worker_id, sessions=sessions,
    )
    transport = RoutingTransport(wiring, transport_of=lambda instance_id: instances.transport_of(core, instance_id))
    declare_actors(broker, Deliverer(core, transport, worker_id), PresenceSender(transport),
                   settings.message_queue_name)
    tasks = core_tasks(core, may_judge) + [
        Task(f"{name} upkeep", lambda conn, upkeep=spec.maintenance: upkeep(conn, settings))
        for name, spec in TRANSPORTS.items() if spec.maintenance
    ]
    maintenance = MaintenanceLoop(pool, tasks, settings.message_queue_maintenance_interval)
    waker = DueTimeWaker(database_url, queues) if settings.message_queue_due_wakeup else None
    poster = WebhookPoster(core, database_url, threads=settings.webhook_threads, timeout=settings.webhook_timeout,
                           retry_for=settings.webhook_retry_for,
                           receiver_concurrency=settings.webhook_receiver_concurrency)

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=1000)
    # Claim no more than we can run: messages claimed ahead by a worker that dies wait out the
    # heartbeat TTL (docs/architecture.md, facts about dramatiq-postgres).
    worker.queue_prefetch = threads
    worker.delay_prefetch = 1

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    heartbeat.start()
    counters.serve(settings.worker_metrics_port)
    worker.start()
    leases.start()
    maintenance.start()
    poster.start()
    if waker is not None:
        waker.start()
    logger.info("worker started", extra={
        "worker_id": broker.worker_id, "threads": threads, "queue": settings.message_queue_name,
    })
    stopping.wait()
    # Claim nothing more: a stopping worker must not sit on other instances' heads while its
    # last send finishes (consumers keep heartbeating meanwhile).
    broker.stop_claiming()
    leases.drain()  # renew what it owns while its sends finish; take nothing more
    maintenance.stop()
    poster.stop()
    if waker is not None:
        waker.stop()
    # Stops taking messages, lets every message in progress finish and record, puts the
    # claimed-ahead ones back in the broker.
    worker.stop(timeout=int(settings.message_queue_job_timeout * 1000) + 30_000)
    transport.close()  # the WhatsApp connections close before their leases go to other workers
    leases.stop()
    heartbeat.stop(leave=True)  # last: the others count it live no longer, and take its sessions
    broker.close()
    pool.close()
    logger.info("worker stopped", extra={"worker_id": broker.worker_id})
    return 0
