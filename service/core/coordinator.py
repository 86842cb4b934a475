"""The Coordinator: the seed's queue operations, called by the API, the workers and the tests.

It knows no HTTP and no actor. Each method is one short transaction; the transitions that
can change an instance's head run as SQL functions (sql/003_queue_functions.sql) that take the
instance lock (R1) and dispatch inside the same transaction (R2).
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from service.core import queries
from service.core.models import (
    DELIVER_ACTOR,
    PRESENCE_ACTOR,
    CancelRefused,
    DueTimeTooFar,
    Enqueued,
    Instance,
    InstanceNotFound,
    InvalidClientToken,
    InvalidToken,
    Job,
    JobNotFound,
    MessageRequest,
    SessionCommandFailed,
)
from service.db import fetch_all, fetch_one, fetch_one_async
from service.settings import Settings, min_send_interval

logger = logging.getLogger("wmq.core")


def check_credentials(instance: Instance, token: str, client_token: str | None) -> Instance:
    """`instance`, if `token` (and `client_token`, when the instance has one) match."""
    if not secrets.compare_digest(instance.token, token):
        raise InvalidToken("invalid token for this instance")
    if instance.client_token and not secrets.compare_digest(instance.client_token, client_token or ""):
        raise InvalidClientToken("missing or invalid Client-Token header")
    return instance


def _instance(row: dict[str, Any] | None) -> Instance:
    if row is None:
        raise InstanceNotFound("instance not found")
    return Instance.from_row(row)


@contextlib.contextmanager
def _enqueue_errors() -> Iterator[None]:
    """The enqueue's database errors, as the core's."""
    try:
        yield
    except psycopg.errors.NoDataFound:  # removed between authentication and enqueue
        raise InstanceNotFound("instance not found") from None
    except (psycopg.errors.DatetimeFieldOverflow, psycopg.errors.IntervalFieldOverflow):
        raise DueTimeTooFar("the delays of this instance's queue chain more than 100 years ahead") from None


class Coordinator:
    def __init__(self, pool: ConnectionPool, settings: Settings, async_pool: AsyncConnectionPool | None = None) -> None:
        self.pool = pool
        self.async_pool = async_pool
        self.settings = settings
        self._started = True

    # -- helpers --------------------------------------------------------------------------------

    def _one(self, sql: str, **params: Any) -> dict[str, Any] | None:
        return fetch_one(self.pool, sql, params)

    def _all(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return fetch_all(self.pool, sql, params)

    @property
    def _route(self) -> dict[str, str]:
        """Where dispatches go: the base broker queue (SQL `wmq_queue_for` adds the sessions
        suffix for real-WhatsApp instances) and the actors."""
        return {
            "queue": self.settings.message_queue_name,
            "actor": DELIVER_ACTOR,
            "presence_actor": PRESENCE_ACTOR,
        }

    def _jitter_ms(self) -> int:
        low = self.settings.message_queue_min_jitter
        high = self.settings.message_queue_max_jitter
        return round(random.uniform(low, high) * 1000)

    # -- lifecycle ------------------------------------------------------------------------------

    def add_instance_queue(
        self,
        instance_id: UUID | None = None,
        *,
        name: str = "",
        token: str | None = None,
        client_token: str | None = None,
        transport: str | None = None,
    ) -> Instance:
        """Create an instance (a WhatsApp account) and its queue."""
        row = self._one(
            queries.INSERT_INSTANCE,
            id=instance_id or uuid4(),
            token=token or secrets.token_hex(16),
            client_token=client_token,
            name=name,
            transport=transport or self.settings.whatsapp_transport,
            min_send_interval_ms=round(min_send_interval(self.settings) * 1000),
        )
        assert row is not None
        instance = Instance.from_row(row)
        logger.info("instance added", extra={"instance_id": str(instance.id)})
        return instance

    def remove_instance_queue(self, instance_id: UUID) -> None:
        """Delete an instance with its queue and history; its queued broker messages go too."""
        row = self._one(queries.DELETE_INSTANCE, id=instance_id)
        if not row or not row["ok"]:
            raise InstanceNotFound("instance not found")
        logger.info("instance removed", extra={"instance_id": str(instance_id)})

    def get_instance(self, instance_id: UUID) -> Instance:
        return _instance(self._one(queries.GET_INSTANCE, id=instance_id))

    async def get_instance_async(self, instance_id: UUID) -> Instance:
        """`get_instance` on the API's event loop (the send path's authentication)."""
        assert self.async_pool is not None, "no async pool"
        return _instance(await fetch_one_async(self.async_pool, queries.GET_INSTANCE, {"id": instance_id}))

    def list_instances(self) -> list[Instance]:
        return [Instance.from_row(r) for r in self._all(queries.LIST_INSTANCES)]

    def authenticate(
        self, instance_id: UUID, token: str, client_token: str | None = None
    ) -> Instance:
        """The instance, if `token` (and `client_token`, when the instance has one) match."""
        return check_credentials(self.get_instance(instance_id), token, client_token)

    def stop(self) -> None:
        self._started = False

    def is_started(self) -> bool:
        return self._started and not self.pool.closed

    # -- enqueue --------------------------------------------------------------------------------

    def enqueue_message(self, instance_id: UUID, request: MessageRequest) -> Enqueued:
        """§3.1: one transaction: lock, sequence, chained due time, insert, dispatch if head."""
        params = self._enqueue_params(instance_id, request)
        with _enqueue_errors():
            row = self._one(queries.ENQUEUE, **params)
        return self._enqueued(params, request, row)

    async def enqueue_message_async(self, instance_id: UUID, request: MessageRequest) -> Enqueued:
        """`enqueue_message` on the API's event loop, through the async pool given at
        construction: the send path's one database call without a hop to a thread."""
        assert self.async_pool is not None, "no async pool"
        params = self._enqueue_params(instance_id, request)
        with _enqueue_errors():
            row = await fetch_one_async(self.async_pool, queries.ENQUEUE, params)
        return self._enqueued(params, request, row)

    def _enqueue_params(self, instance_id: UUID, request: MessageRequest) -> dict[str, Any]:
        return {
            "zaap_id": uuid4().hex,
            "instance_id": instance_id,
            "message_type": request.message_type,
            "phone": request.phone,
            "payload": Jsonb(request.payload),
            "delay_ms": request.delay_message_ms,
            "typing_ms": request.delay_typing_ms,
            "jitter_ms": self._jitter_ms(),
            "scheduled_for": request.scheduled_for,
            "max_attempts": self.settings.message_queue_max_job_attempts,
            **self._route,
        }

    @staticmethod
    def _enqueued(params: dict[str, Any], request: MessageRequest, row: dict[str, Any] | None) -> Enqueued:
        assert row is not None
        enqueued = Enqueued(
            zaap_id=params["zaap_id"],
            instance_id=params["instance_id"],
            sequence=row["sequence"],
            scheduled_at=row["scheduled_at"],
            status=row["status"],
        )
        logger.info(
            "message enqueued",
            extra={
                "zaap_id": enqueued.zaap_id,
                "instance_id": str(enqueued.instance_id),
                "sequence": enqueued.sequence,
                "message_type": request.message_type,
                "scheduled_at": enqueued.scheduled_at.isoformat(),
            },
        )
        return enqueued

    # -- queries --------------------------------------------------------------------------------

    def get_job_by_zaap_id(self, zaap_id: str, *, with_events: bool = False) -> Job:
        row = self._one(queries.GET_JOB, zaap_id=zaap_id)
        if row is None:
            raise JobNotFound("message not found")
        job = Job.from_row(row)
        if with_events:
            job.events = self._all(queries.MESSAGE_EVENTS, zaap_id=zaap_id)
        return job

    def get_queue_position(self, zaap_id: str) -> int | None:
        """1 for the head of its instance's queue; None once the message is finished."""
        return self.get_job_by_zaap_id(zaap_id).position

    def list_queue_jobs(
        self, instance_id: UUID, limit: int = 50, offset: int = 0, status: str | None = None
    ) -> tuple[list[Job], int]:
        """A page of an instance's messages in sequence order, and how many there are."""
        params = {"instance_id": instance_id, "status": status, "limit": limit, "offset": offset}
        rows = self._all(queries.LIST_JOBS, **params)
        total = self._one(queries.COUNT_JOBS, **params)
        return [Job.from_row(r) for r in rows], int(total["total"]) if total else 0

    def get_queue_stats(self, instance_id: UUID) -> dict[str, Any]:
        row = self._one(queries.QUEUE_STATS, instance_id=instance_id)
        if row is None:
            raise InstanceNotFound("instance not found")
        return row

    def list_active_queues(self) -> list[dict[str, Any]]:
        return self._all(queries.ACTIVE_QUEUES)

    # -- management -----------------------------------------------------------------------------

    def cancel_job(self, zaap_id: str) -> str:
        """Cancel one pending message; returns the status it had. A cancelled head lets the
        next one go."""
        row = self._one(queries.CANCEL, zaap_id=zaap_id, **self._route)
        if row is None or row["previous_status"] is None:
            raise JobNotFound("message not found")
        if not row["cancelled"]:
            raise CancelRefused(row["previous_status"])
        logger.info("message cancelled", extra={"zaap_id": zaap_id})
        return str(row["previous_status"])

    def cancel_all(self, instance_id: UUID) -> int:
        """Cancel every pending message of one instance; a message being sent finishes."""
        row = self._one(queries.CANCEL_ALL, instance_id=instance_id, **self._route)
        if row is None or row["count"] is None:
            raise InstanceNotFound("instance not found")
        logger.info("queue cancelled", extra={"instance_id": str(instance_id), "count": row["count"]})
        return int(row["count"])

    def pause(self, instance_id: UUID) -> None:
        self._set_paused(instance_id, True)

    def resume(self, instance_id: UUID) -> None:
        self._set_paused(instance_id, False)

    def _set_paused(self, instance_id: UUID, paused: bool) -> None:
        row = self._one(queries.SET_PAUSED, id=instance_id, paused=paused, **self._route)
        if not row or not row["ok"]:
            raise InstanceNotFound("instance not found")
        logger.info("instance paused" if paused else "instance resumed",
                    extra={"instance_id": str(instance_id)})

    # -- the worker's transitions (§3.3–3.6) ----------------------------------------------------

    def claim(self, zaap_id: str, dispatch_id: UUID, worker_id: UUID) -> Job | None:
        """R3: the message, now this worker's: `sending` (its attempt counted) when this dispatch
        goes straight to the send, `running` for a typing phase 1; None if the dispatch is stale."""
        row = self._one(queries.CLAIM, zaap_id=zaap_id, dispatch_id=dispatch_id, worker_id=worker_id)
        if row is None:
            return None
        row["position"] = 1
        return Job.from_row(row)

    def start_typing(self, zaap_id: str, worker_id: UUID) -> bool:
        row = self._one(queries.START_TYPING, zaap_id=zaap_id, worker_id=worker_id, **self._route)
        return bool(row and row["ok"])

    def complete(self, zaap_id: str, worker_id: UUID, whatsapp_id: str) -> bool:
        row = self._one(
            queries.COMPLETE, zaap_id=zaap_id, worker_id=worker_id, whatsapp_id=whatsapp_id,
            **self._route,
        )
        return bool(row and row["ok"])

    def fail(
        self, zaap_id: str, worker_id: UUID, error: str, *, permanent: bool, backoff: float
    ) -> str | None:
        """Record a failed attempt; returns `retryable`, `discarded`, or None if not ours."""
        row = self._one(
            queries.FAIL, zaap_id=zaap_id, worker_id=worker_id, error=error,
            permanent=permanent, backoff_ms=round(backoff * 1000), **self._route,
        )
        return row["status"] if row else None

    def snooze(self, zaap_id: str, worker_id: UUID, delay: float, reason: str) -> bool:
        row = self._one(
            queries.SNOOZE, zaap_id=zaap_id, worker_id=worker_id,
            delay_ms=round(delay * 1000), reason=reason, **self._route,
        )
        return bool(row and row["ok"])

    def set_connection_state(self, instance_id: UUID, state: str, detail: str | None = None) -> None:
        """Record a connection change; on `connected`, a snoozed head goes at once (§3.4)."""
        row = self._one(queries.SET_CONNECTION, instance_id=instance_id, state=state, detail=detail,
                        **self._route)
        if not row or not row["ok"]:
            raise InstanceNotFound("instance not found")
        logger.info("connection changed", extra={"instance_id": str(instance_id), "state": state})

    # -- WhatsApp sessions --------------------------------------------------------------------

    def record_whatsapp_state(self, instance_id: UUID, state: str, detail: str | None, worker_id: UUID,
                              **extra: Any) -> None:
        """A session's state change: the QR code or WhatsApp id it brought, and the connection
        state (on `connected` a waiting head goes at once)."""
        self._one(
            queries.RECORD_WHATSAPP + " RETURNING id", instance_id=instance_id, state=state,
            has_qr="qr" in extra, qr=extra.get("qr"), has_jid="jid" in extra, jid=extra.get("jid"),
            worker_id=worker_id,
        )
        self.set_connection_state(instance_id, state, detail)

    def instance_status(self, instance_id: UUID) -> dict[str, Any]:
        """The connection as the worker holding the session last saw it, if that worker lives."""
        row = self._one(queries.INSTANCE_STATUS, id=instance_id, ttl_s=self.settings.message_queue_heartbeat_ttl)
        if row is None:
            raise InstanceNotFound("instance not found")
        return row

    def run_session_command(self, instance_id: UUID, command: str, args: dict[str, Any] | None = None
                            ) -> dict[str, Any]:
        """Ask the worker holding the instance's WhatsApp session to act, and wait for its answer."""
        try:
            row = self._one(queries.INSERT_COMMAND, instance_id=instance_id, command=command, args=Jsonb(args or {}))
        except psycopg.errors.ForeignKeyViolation:  # removed meanwhile
            raise InstanceNotFound("instance not found") from None
        assert row is not None
        deadline = time.monotonic() + self.settings.whatsapp_command_timeout
        while time.monotonic() < deadline:
            done = self._one(queries.COMMAND_RESULT, id=row["id"])
            if done and done["done_at"]:
                if done["error"]:
                    raise SessionCommandFailed(done["error"])
                return dict(done["result"] or {})
            time.sleep(0.1)
        self._one(queries.CANCEL_COMMAND + " RETURNING id", id=row["id"])
        raise SessionCommandFailed("no worker holding this WhatsApp session answered in time")

    def release_dead_sessions(self) -> list[dict[str, Any]] | None:
        """Instances whose session holder died are no longer connected."""
        return self._as_leader(queries.RELEASE_DEAD_SESSIONS, ttl_s=self.settings.message_queue_heartbeat_ttl)

    # -- maintenance (§3.7), run by the leader of workers/maintenance -------------------------

    def _as_leader(self, sql: str, **params: Any) -> list[dict[str, Any]] | None:
        """Run `sql` if this transaction wins the maintenance lock; None if another loop holds it."""
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            leader = cur.execute(queries.MAINTENANCE_LOCK).fetchone()
            if not leader or not leader["leader"]:
                return None
            return cur.execute(sql, params).fetchall()

    def rescue_dead_workers(self) -> list[dict[str, Any]] | None:
        """R5: recover `running`/`sending` messages whose worker's heartbeat expired."""
        return self._as_leader(
            queries.RESCUE, ttl_s=self.settings.message_queue_heartbeat_ttl,
            resend=self.settings.message_queue_resend_uncertain, **self._route,
        )

    def redispatch_orphans(self) -> list[dict[str, Any]] | None:
        """Dispatch again the heads that have no broker message."""
        return self._as_leader(queries.REDISPATCH_ORPHANS, **self._route)

    def purge_finished(self, batch: int = 10_000) -> int | None:
        rows = self._as_leader(
            queries.PURGE_FINISHED, retention_s=self.settings.message_queue_retention_period, batch=batch
        )
        return None if rows is None else int(rows[0]["purged"])

    # -- the simulator transport's knobs (the API reaches transports only through the core) ---

    def simulator_configure(self, instance_id: UUID, **knobs: Any) -> dict[str, Any]:
        """Set the simulated instance's knobs; flipping `connected` is a connection event."""
        from workers.transports import simulator

        self.get_instance(instance_id)
        state = simulator.configure(self.pool, instance_id, **knobs)
        if knobs.get("connected") is not None:
            self.set_connection_state(instance_id, "connected" if knobs["connected"] else "disconnected",
                                      "simulator switch")
        return state

    def simulator_connected(self, instance_id: UUID) -> bool:
        from workers.transports import simulator

        return bool(simulator.state(self.pool, instance_id)["connected"])

    def simulator_events(self, instance_id: UUID) -> list[dict[str, Any]]:
        from workers.transports import simulator

        return simulator.events(self.pool, instance_id)
