"""The simulator: a WhatsApp stand-in that records every presence and send in PostgreSQL.

It is the network edge for tests and for trying the product without a phone. Its state per
instance (connected, failures to inject, latency) lives in `simulator_instances`, so the API
process can steer what the worker processes see.
"""

from __future__ import annotations

import time
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
)

STATE = """
    SELECT connected, latency_ms FROM simulator_instances WHERE instance_id = %(id)s
"""

# Takes one injected failure, if any, reads the state, and when the send is instant (connected,
# no failure, no latency: the common case) records it too: one statement per send, like one
# network call, rather than a read and a write.
SEND = """
    WITH taken AS (
        UPDATE simulator_instances SET fail_next = fail_next - 1
         WHERE instance_id = %(id)s AND fail_next > 0 AND connected
        RETURNING true AS fail
    ), state AS (
        SELECT COALESCE(s.connected, true) AS connected, COALESCE(s.latency_ms, 0) AS latency_ms,
               COALESCE(s.fail_mode, 'retryable') AS fail_mode, EXISTS (SELECT 1 FROM taken) AS fail
          FROM (SELECT 1) AS one LEFT JOIN simulator_instances s ON s.instance_id = %(id)s
    ), sent AS (
        INSERT INTO simulator_events
            (instance_id, kind, phone, zaap_id, payload, whatsapp_message_id, started_at, ended_at)
        SELECT %(id)s, 'send', %(phone)s, %(zaap_id)s, %(payload)s, %(whatsapp_id)s,
               clock_timestamp(), clock_timestamp()
          FROM state WHERE connected AND latency_ms = 0 AND NOT fail
        RETURNING 1
    )
    SELECT state.*, EXISTS (SELECT 1 FROM sent) AS sent FROM state
"""

RECORD = """
    INSERT INTO simulator_events
        (instance_id, kind, phone, presence, zaap_id, payload, whatsapp_message_id,
         started_at, ended_at)
    VALUES (%(id)s, %(kind)s, %(phone)s, %(presence)s, %(zaap_id)s, %(payload)s,
            %(whatsapp_id)s, %(started_at)s, %(ended_at)s)
"""

CONFIGURE = """
    INSERT INTO simulator_instances AS s (instance_id, connected, fail_next, fail_mode, latency_ms)
    VALUES (%(id)s, COALESCE(%(connected)s, true), COALESCE(%(fail_next)s, 0),
            COALESCE(%(fail_mode)s, 'retryable'), COALESCE(%(latency_ms)s, 0))
    ON CONFLICT (instance_id) DO UPDATE SET
        connected = COALESCE(%(connected)s, s.connected),
        fail_next = COALESCE(%(fail_next)s, s.fail_next),
        fail_mode = COALESCE(%(fail_mode)s, s.fail_mode),
        latency_ms = COALESCE(%(latency_ms)s, s.latency_ms)
    RETURNING connected, fail_next, fail_mode, latency_ms
"""

PURGE = "DELETE FROM simulator_events WHERE ended_at < now() - make_interval(secs => %(retention_s)s)"

EVENTS = """
    SELECT id, kind, phone, presence, zaap_id, payload, whatsapp_message_id,
           started_at, ended_at
      FROM simulator_events WHERE instance_id = %(id)s ORDER BY id
"""

_DEFAULT_STATE = {"connected": True, "latency_ms": 0, "fail": False, "fail_mode": "retryable"}


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
        whatsapp_id = "SIM" + uuid4().hex[:20].upper()
        started_at = _now()
        knobs = fetch_one(self.pool, SEND, {
            "id": message.instance_id, "phone": message.phone, "zaap_id": message.zaap_id,
            "payload": Jsonb(message.payload), "whatsapp_id": whatsapp_id})
        assert knobs is not None
        if knobs["sent"]:
            return whatsapp_id
        if not knobs["connected"]:
            raise InstanceDisconnected("simulated instance is disconnected")
        latency = knobs["latency_ms"] / 1000
        if latency > self.timeout:
            time.sleep(self.timeout)
            raise RetryableSendError(f"simulated send timed out after {self.timeout:g}s")
        time.sleep(latency)
        if knobs["fail"] and knobs["fail_mode"] == "permanent":
            raise PermanentSendError("simulated permanent failure: the number is not on WhatsApp")
        if knobs["fail"]:
            raise RetryableSendError("simulated send failure")
        self._record(
            id=message.instance_id, kind="send", phone=message.phone, presence=None,
            zaap_id=message.zaap_id, payload=Jsonb(message.payload), whatsapp_id=whatsapp_id,
            started_at=started_at, ended_at=_now(),
        )
        return whatsapp_id

    def close(self) -> None:
        pass


# -- control, for the API and the tests ---------------------------------------------------------


class SimulatorControl:
    """The simulator's knobs and record, for the API (wired in service/cli.py) and the tests."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def configure(self, instance_id: UUID, *, connected: bool | None = None, fail_next: int | None = None,
                  fail_mode: str | None = None, latency_ms: int | None = None) -> dict[str, Any]:
        """Set any of the simulated instance's knobs; returns the resulting state."""
        params = {"id": instance_id, "connected": connected, "fail_next": fail_next, "fail_mode": fail_mode,
                  "latency_ms": latency_ms}
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
