"""The simulator: a WhatsApp stand-in that records every presence and send in PostgreSQL.

It is the network edge for tests and for trying the product without a phone. Its state per
instance (connected, failures to inject, latency) lives in `simulator_instances`, so the API
process can steer what the worker processes see.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from service.db.pools import fetch_all, fetch_one
from service.settings import Settings
from workers.transports.base import (
    InstanceDisconnected,
    OutgoingMessage,
    PermanentSendError,
    Presence,
    RetryableSendError,
    UncertainSendError,
)

#: How long after its latency a late answer still counts as on time (the timer's own delay).
LATE_MARGIN = 1.0

STATE = """
    SELECT connected, latency_ms, prepare_ms FROM simulator_instances WHERE instance_id = %(id)s
"""

#: Recorded only if the frame lands by the guard's deadline (`OutgoingMessage.before_write`), as
#: a receiver that knew the sender's fence would: a frozen worker's frame arrives too late.
IN_TIME = "(%(not_after)s::timestamptz IS NULL OR clock_timestamp() <= %(not_after)s::timestamptz)"

# Takes one injected failure, if any, reads the state, and when the frame can leave at once
# (connected, no failure, nothing to prepare: the common case) records it too: one statement per
# send, like one network call, rather than a read and a write.
SEND = f"""
    WITH taken AS (
        UPDATE simulator_instances SET fail_next = fail_next - 1
         WHERE instance_id = %(id)s AND fail_next > 0 AND connected
        RETURNING true AS fail
    ), state AS (
        SELECT COALESCE(s.connected, true) AS connected, COALESCE(s.latency_ms, 0) AS latency_ms,
               COALESCE(s.prepare_ms, 0) AS prepare_ms,
               COALESCE(s.fail_mode, 'retryable') AS fail_mode, EXISTS (SELECT 1 FROM taken) AS fail
          FROM (SELECT 1) AS one LEFT JOIN simulator_instances s ON s.instance_id = %(id)s
    ), sent AS (
        INSERT INTO simulator_events
            (instance_id, kind, phone, zaap_id, payload, whatsapp_message_id, started_at, ended_at)
        SELECT %(id)s, 'send', %(phone)s, %(zaap_id)s, %(payload)s, %(whatsapp_id)s,
               clock_timestamp(), clock_timestamp()
          FROM state WHERE connected AND prepare_ms = 0 AND NOT fail AND {IN_TIME}
        RETURNING 1
    )
    SELECT state.*, EXISTS (SELECT 1 FROM sent) AS sent FROM state
"""

#: The frame of a send that was prepared first (or came too late the first time).
FRAME = f"""
    INSERT INTO simulator_events
        (instance_id, kind, phone, zaap_id, payload, whatsapp_message_id, started_at, ended_at)
    SELECT %(id)s, 'send', %(phone)s, %(zaap_id)s, %(payload)s, %(whatsapp_id)s,
           clock_timestamp(), clock_timestamp()
     WHERE {IN_TIME}
"""

RECORD = """
    INSERT INTO simulator_events
        (instance_id, kind, phone, presence, zaap_id, payload, whatsapp_message_id,
         started_at, ended_at)
    VALUES (%(id)s, %(kind)s, %(phone)s, %(presence)s, %(zaap_id)s, %(payload)s,
            %(whatsapp_id)s, %(started_at)s, %(ended_at)s)
"""

CONFIGURE = """
    INSERT INTO simulator_instances AS s (instance_id, connected, fail_next, fail_mode, latency_ms, prepare_ms)
    VALUES (%(id)s, COALESCE(%(connected)s, true), COALESCE(%(fail_next)s, 0),
            COALESCE(%(fail_mode)s, 'retryable'), COALESCE(%(latency_ms)s, 0), COALESCE(%(prepare_ms)s, 0))
    ON CONFLICT (instance_id) DO UPDATE SET
        connected = COALESCE(%(connected)s, s.connected),
        fail_next = COALESCE(%(fail_next)s, s.fail_next),
        fail_mode = COALESCE(%(fail_mode)s, s.fail_mode),
        latency_ms = COALESCE(%(latency_ms)s, s.latency_ms),
        prepare_ms = COALESCE(%(prepare_ms)s, s.prepare_ms)
    RETURNING connected, fail_next, fail_mode, latency_ms, prepare_ms
"""

PURGE = "DELETE FROM simulator_events WHERE ended_at < now() - make_interval(secs => %(retention_s)s)"

EVENTS = """
    SELECT id, kind, phone, presence, zaap_id, payload, whatsapp_message_id,
           started_at, ended_at
      FROM simulator_events WHERE instance_id = %(id)s ORDER BY id
"""

_DEFAULT_STATE = {"connected": True, "latency_ms": 0, "prepare_ms": 0, "fail": False, "fail_mode": "retryable"}


def _now() -> datetime:
    return datetime.now(UTC)


class SimulatorTransport:
    def __init__(self, pool: ConnectionPool, *, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout

    def _record(self, **event: Any) -> None:
        with self.pool.connection() as conn:
            conn.execute(RECORD, event)

    def is_connected(self, instance_id: UUID) -> bool:
        return bool(state(self.pool, instance_id)["connected"])

    def send_presence(self, instance_id: UUID, phone: str, presence: Presence) -> None:
        if not self.is_connected(instance_id):
            raise InstanceDisconnected("simulated instance is disconnected")
        at = _now()
        self._record(
            id=instance_id, kind="presence", phone=phone, presence=presence, zaap_id=None,
            payload=None, whatsapp_id=None, started_at=at, ended_at=at,
        )

    def send(self, message: OutgoingMessage) -> str:
        """As WhatsApp's call goes: preparation (`prepare_ms`), the claim checked
        (`before_write`), the frame recorded, then the wait for the server's answer (`latency_ms`).
        A refusal (`fail_next`) records nothing: nothing reached the contact."""
        whatsapp_id = "SIM" + uuid4().hex[:20].upper()
        frame = {"id": message.instance_id, "phone": message.phone, "zaap_id": message.zaap_id,
                 "payload": Jsonb(message.payload), "whatsapp_id": whatsapp_id}
        knobs = fetch_one(self.pool, SEND, {**frame, "not_after": message.before_write()})
        assert knobs is not None
        if not knobs["connected"]:
            raise InstanceDisconnected("simulated instance is disconnected")
        if not knobs["sent"] and not knobs["fail"]:
            time.sleep(knobs["prepare_ms"] / 1000)
            self._frame(message, frame)
        return self._answer(knobs, whatsapp_id)

    def _frame(self, message: OutgoingMessage, frame: dict[str, Any]) -> None:
        """Record the frame by the guard's deadline, checking the claim again if it came too late."""
        while True:
            with self.pool.connection() as conn:
                if conn.execute(FRAME, {**frame, "not_after": message.before_write()}).rowcount:
                    return

    def _answer(self, knobs: dict[str, Any], whatsapp_id: str) -> str:
        """The server's answer after `latency_ms`; past the job timeout, the call is abandoned and
        answers later (a refusal too: nothing was recorded then)."""
        latency = knobs["latency_ms"] / 1000
        if latency > self.timeout:
            time.sleep(self.timeout)
            late: Future[str] = Future()
            late.set_running_or_notify_cancel()
            answer = threading.Timer(latency - self.timeout, self._settle, args=(late, knobs, whatsapp_id))
            answer.daemon = True
            answer.start()
            raise UncertainSendError(f"simulated send did not answer within {self.timeout:g}s",
                                     late=late, late_within=latency - self.timeout + LATE_MARGIN)
        time.sleep(latency)
        return self._settle(None, knobs, whatsapp_id)

    @staticmethod
    def _settle(late: Future[str] | None, knobs: dict[str, Any], whatsapp_id: str) -> str:
        error: Exception | None = None
        if knobs["fail"] and knobs["fail_mode"] == "permanent":
            error = PermanentSendError("simulated permanent failure: the number is not on WhatsApp")
        elif knobs["fail"]:
            error = RetryableSendError("simulated send failure")
        if late is not None:
            late.set_exception(error) if error else late.set_result(whatsapp_id)
        elif error:
            raise error
        return whatsapp_id

    def close(self) -> None:
        pass


# -- control, for the API and the tests ---------------------------------------------------------


class SimulatorControl:
    """The simulator's knobs and record, for the API (wired in service/cli.py) and the tests."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def configure(self, instance_id: UUID, *, connected: bool | None = None, fail_next: int | None = None,
                  fail_mode: str | None = None, latency_ms: int | None = None,
                  prepare_ms: int | None = None) -> dict[str, Any]:
        """Set any of the simulated instance's knobs; returns the resulting state."""
        params = {"id": instance_id, "connected": connected, "fail_next": fail_next, "fail_mode": fail_mode,
                  "latency_ms": latency_ms, "prepare_ms": prepare_ms}
        row = fetch_one(self.pool, CONFIGURE, params)
        assert row is not None
        return row

    def state(self, instance_id: UUID) -> dict[str, Any]:
        """The simulated instance's connection and latency (connected until told otherwise)."""
        return state(self.pool, instance_id)

    def events(self, instance_id: UUID) -> list[dict[str, Any]]:
        """Every presence and send of the instance, in the order they happened."""
        return fetch_all(self.pool, EVENTS, {"id": instance_id})


def state(pool: ConnectionPool, instance_id: UUID) -> dict[str, Any]:
    return fetch_one(pool, STATE, {"id": instance_id}) or _DEFAULT_STATE


def purge(conn: psycopg.Connection[Any], settings: Settings) -> int:
    """Maintenance: the record's entries older than MESSAGE_QUEUE_RETENTION_PERIOD go, as the
    finished messages they belong to do."""
    return conn.execute(PURGE, {"retention_s": settings.message_queue_retention_period}).rowcount
