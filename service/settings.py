"""Every setting of the service, read once from the environment and validated loudly at start.

Durations accept `100ms`, `30s`, `5m`, `24h`, `2d` (or a bare number of seconds) and are held
as float seconds.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """`100ms` → 0.1; `5m` → 300.0; numbers are seconds."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (examples: 100ms, 30s, 5m, 24h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """Environment variables, named as in the seed (`MESSAGE_QUEUE_*`, `WHATSAPP_*`)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    # Where things run. Unset DATABASE_URL: an embedded PostgreSQL under DATA_DIR (pgserver).
    database_url: str | None = None
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"
    port: int = 8000
    # Bearer token for the admin routes (creating instances). `wmq run` makes one when unset.
    admin_token: str | None = None
    log_level: str = "INFO"

    # The seed's queue settings.
    message_queue_enabled: bool = True
    #: Messages one instance may have in flight. FIFO needs exactly 1.
    message_queue_worker_max_workers: int = 1
    #: Threads of one worker process: how many instances it serves at once.
    message_queue_worker_threads: int = 32
    #: How often idle consumers look for due messages (a NOTIFY wakes them sooner).
    message_queue_poll_interval: Duration = 0.1
    message_queue_max_job_attempts: int = 3
    #: Bound of one WhatsApp call; shorter than the heartbeat TTL so a hung call is never
    #: mistaken for a dead worker (I5).
    message_queue_job_timeout: Duration = 30.0
    message_queue_retention_period: Duration = 24 * 3600.0
    message_queue_min_jitter: Duration = 1.0
    message_queue_max_jitter: Duration = 3.0
    #: How long a head waits before the connection is checked again (snooze).
    message_queue_disconnect_retry_delay: Duration = 30.0
    message_queue_retry_min_backoff: Duration = 1.0
    message_queue_retry_max_backoff: Duration = 300.0
    #: Broker heartbeat of each worker process, the age after which a worker counts as dead,
    #: and how often the broker's own upkeep runs. Every worker must use the same TTL.
    message_queue_heartbeat_interval: Duration = 15.0
    message_queue_heartbeat_ttl: Duration = 60.0
    message_queue_maintenance_interval: Duration = 30.0
    #: How often each worker renews, balances and takes its WhatsApp session leases (their
    #: TTL is MESSAGE_QUEUE_HEARTBEAT_TTL): how soon sessions move after a `kubectl scale`.
    message_queue_lease_interval: Duration = 2.0
    #: Notify a queue the moment its next delayed message falls due (workers/waker.py), so
    #: delayed messages are not up to a poll interval late.
    message_queue_due_wakeup: bool = True
    #: The broker queue the workers consume.
    message_queue_name: str = "whatsapp"
    #: Resend a message whose send was interrupted by a crash (at-least-once), or discard it.
    message_queue_resend_uncertain: bool = True

    #: The transport of new instances (each instance keeps the one it was created with).
    whatsapp_transport: Literal["simulator", "neonize"] = "simulator"
    #: Minimum spacing between two sends of one instance, on top of the delays (a ban guard).
    #: Unset: MESSAGE_QUEUE_MIN_JITTER. Stored per instance at creation.
    whatsapp_min_send_interval: Duration | None = None
    #: Proxy for WhatsApp connections (`socks5://host:port`, `http://host:port`).
    whatsapp_proxy: str | None = None
    #: Schema of the WhatsApp session store (whatsmeow's tables) in the same database.
    whatsapp_store_schema: str = "whatsmeow"
    #: Longest wait between two reconnection attempts of a WhatsApp session.
    whatsapp_reconnect_max_backoff: Duration = 60.0
    #: How long the API waits for the worker holding a session to run a command (pair code, …).
    whatsapp_command_timeout: Duration = 20.0
    #: How long one pairing attempt may last (WhatsApp's QR window is about 160 s).
    whatsapp_pairing_timeout: Duration = 170.0
    #: Default cap on the messages one instance accepts per minute (429 with Retry-After beyond
    #: it); unset: no cap. An instance may have its own (`maxMessagesPerMinute` at creation).
    message_queue_max_per_minute: int | None = None
    #: Port on which each worker serves its own Prometheus counters (unset: none).
    worker_metrics_port: int | None = None
    #: The largest request body the API reads (inline media included); larger ones get a 413.
    api_max_body_bytes: int = 20 * 1024 * 1024
    #: Threads per worker posting webhooks, apart from sending: posts in flight at once. They
    #: hold no database connection while a receiver answers (the poster's pool is small).
    webhook_threads: int = 32
    #: How long a webhook receiver may take for one delivery, all of it (connect, send, answer).
    webhook_timeout: Duration = 10.0
    #: Posts in flight at once to one receiver (scheme, host and port) from one worker.
    webhook_receiver_concurrency: int = 4
    #: After a rotation, how long deliveries are signed with the previous secret too.
    webhook_secret_grace: Duration = 24 * 3600.0
    #: Private hosts and networks the service may reach for customers (webhook receivers, media
    #: URLs), comma-separated: host names (`hooks.internal`), addresses or CIDR networks
    #: (`10.1.0.0/16`). Plain http is allowed to these only (or anywhere with OUTBOUND_PLAIN_HTTP).
    #: Default: none; everything outside the public internet is refused.
    outbound_allow: str = ""
    #: Allow plain http (not https) to public hosts for webhooks and media URLs.
    outbound_plain_http: bool = False
    #: Bytes of stored message content (inline media included) one instance may have waiting to
    #: be sent; a send beyond it gets a 413 naming the limit.
    message_queue_max_pending_bytes: int = 256 * 1024 * 1024
    #: How long a delivery is retried (exponential backoff, 1 s doubling to 5 min) before it is
    #: given up and the instance's next one goes.
    webhook_retry_for: Duration = 3600.0
    #: Show each connected account as online, which "typing…" needs; the phone then gets no
    #: notifications while its session is connected.
    whatsapp_announce_available: bool = True
    #: The dashboard marks an instance stuck when its next message is overdue by more than this
    #: (or it is not connected with messages to send), and lists it first.
    dashboard_stuck_after: Duration = 120.0

    @property
    def worker_alive_file(self) -> Path:
        """Touched by a worker's heartbeat thread every round (`wmq healthcheck worker`)."""
        return self.data_dir / "worker-alive"

    @model_validator(mode="after")
    def _validate(self) -> Settings:
        if self.message_queue_worker_max_workers != 1:
            raise ValueError(
                "MESSAGE_QUEUE_WORKER_MAX_WORKERS must be 1: an instance's messages go out "
                "strictly one at a time, in order. To serve more instances at once, raise "
                "MESSAGE_QUEUE_WORKER_THREADS or run more worker processes."
            )
        if self.message_queue_worker_threads < 1:
            raise ValueError("MESSAGE_QUEUE_WORKER_THREADS must be at least 1")
        if not 1 <= self.webhook_threads <= 256:
            raise ValueError("WEBHOOK_THREADS must be from 1 to 256")
        if not 1 <= self.webhook_receiver_concurrency <= self.webhook_threads:
            raise ValueError("WEBHOOK_RECEIVER_CONCURRENCY must be from 1 to WEBHOOK_THREADS")
        if self.admin_token is not None and (len(self.admin_token) < 32 or "CHANGE-ME" in self.admin_token.upper()):
            raise ValueError("ADMIN_TOKEN must be at least 32 characters and not the template's placeholder "
                             "(make one with: openssl rand -hex 32)")
        if self.message_queue_max_job_attempts < 1:
            raise ValueError("MESSAGE_QUEUE_MAX_JOB_ATTEMPTS must be at least 1")
        if self.message_queue_min_jitter > self.message_queue_max_jitter:
            raise ValueError("MESSAGE_QUEUE_MIN_JITTER must not exceed MESSAGE_QUEUE_MAX_JITTER")
        if self.message_queue_retry_min_backoff > self.message_queue_retry_max_backoff:
            raise ValueError(
                "MESSAGE_QUEUE_RETRY_MIN_BACKOFF must not exceed MESSAGE_QUEUE_RETRY_MAX_BACKOFF"
            )
        if self.message_queue_poll_interval <= 0:
            raise ValueError("MESSAGE_QUEUE_POLL_INTERVAL must be positive")
        if self.message_queue_heartbeat_interval >= self.message_queue_heartbeat_ttl:
            raise ValueError(
                "MESSAGE_QUEUE_HEARTBEAT_INTERVAL must be shorter than MESSAGE_QUEUE_HEARTBEAT_TTL"
            )
        if not 0 < self.message_queue_lease_interval < self.message_queue_heartbeat_ttl / 4:
            raise ValueError(
                "MESSAGE_QUEUE_LEASE_INTERVAL must be positive and under a quarter of MESSAGE_QUEUE_HEARTBEAT_TTL, "
                "so a live worker renews its session leases well before they expire"
            )
        if self.message_queue_job_timeout >= self.message_queue_heartbeat_ttl:
            raise ValueError(
                "MESSAGE_QUEUE_JOB_TIMEOUT must be shorter than MESSAGE_QUEUE_HEARTBEAT_TTL, so a "
                "slow WhatsApp call is never taken for a dead worker"
            )
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.whatsapp_store_schema):
            raise ValueError("WHATSAPP_STORE_SCHEMA must be a plain lower-case SQL identifier")
        if not re.fullmatch(r"[A-Za-z0-9_\-]{1,30}", self.message_queue_name):
            raise ValueError("MESSAGE_QUEUE_NAME may hold letters, digits, '_' and '-' only, at most 30 of them "
                             "(its workers' queues must name NOTIFY channels within PostgreSQL's 63 bytes)")
        return self


def min_send_interval(settings: Settings) -> float:
    """WHATSAPP_MIN_SEND_INTERVAL, or the minimum jitter when unset."""
    if settings.whatsapp_min_send_interval is not None:
        return settings.whatsapp_min_send_interval
    return settings.message_queue_min_jitter


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
