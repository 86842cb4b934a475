"""The loop of the workers' long-lived threads (workers/background.py): a stop is prompt while
connecting or waiting, a lost connection is replaced with a capped backoff and the rounds go on,
and a round that raises is logged with the thread's name without ending the loop."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from tests.listeners import Listener
from tests.stack import wait_until
from workers.background import Background, Connection
from workers.liveness import Heartbeat
from workers.waker import DueTimeWaker

CHANNEL = "wmq_test_background"
log = logging.getLogger("wmq.test.background")


class Recorder(Background):
    """Counts its rounds and the backend each ran on; the round numbers in `crash` raise."""

    def __init__(self, name: str, *, wait: float, crash: tuple[int, ...] = (), **options: Any) -> None:
        super().__init__(name, logger=log, **options)
        self.wait = wait
        self.crash = crash
        self.rounds: list[int | None] = []  # the backend pid of each round (None: no connection)
        self.attempts: list[float] = []  # when each connection attempt started

    def round(self, conn: Connection | None) -> float:
        self.rounds.append(None if conn is None else conn.info.backend_pid)
        if len(self.rounds) in self.crash:
            raise RuntimeError(f"round {len(self.rounds)} broke")
        return self.wait

    def connect(self, conninfo: str, **options: Any) -> Connection | None:
        self.attempts.append(time.monotonic())
        return super().connect(conninfo, **options)


@pytest.fixture
def silent_server() -> Iterator[Listener]:
    """A database host that accepts connections and never answers."""
    listener = Listener("never")
    yield listener
    listener.close()


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens on it once closed


def stopped_within(thread: Background, seconds: float) -> float:
    started = time.monotonic()
    thread.stop()
    took = time.monotonic() - started
    assert not thread.is_alive(), f"{thread.name} still runs after stop()"
    assert took < seconds, f"{thread.name} took {took:.2f}s to stop"
    return took


def backends(database_url: str, application_name: str) -> list[int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity"
                            " WHERE application_name = %s AND datname = current_database()",
                            (application_name,)).fetchall()
    return [row[0] for row in rows]


def terminate(database_url: str, pid: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def notify(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"NOTIFY {CHANNEL}")


# -- a prompt stop ---------------------------------------------------------------------------------

HANGING: dict[str, Callable[[str], Background]] = {
    "base": lambda url: Recorder("wmq-test-hang", wait=0.01, conninfo=url, connect_options={"connect_timeout": 30}),
    "heartbeat": lambda url: Heartbeat(url, uuid4(), interval=0.1, ttl=1.0),  # connect_timeout 3
    "waker": lambda url: DueTimeWaker(url, ["whatsapp"]),  # connect_timeout 5
}


@pytest.mark.parametrize("kind", list(HANGING))
def test_a_stop_while_connecting_to_a_silent_server_returns_at_once(
        kind: str, silent_server: Listener) -> None:
    thread = HANGING[kind](f"postgresql://wmq@127.0.0.1:{silent_server.port}/nowhere")
    thread.start()
    wait_until(lambda: silent_server.connections, 5, "the thread to connect")  # an attempt the server never answers
    assert thread.is_alive()
    stopped_within(thread, 1.0)
    if isinstance(thread, Recorder):
        assert thread.rounds == [] and len(thread.attempts) == 1


def test_a_stop_while_waiting_returns_at_once(database_url: str) -> None:
    listening = Recorder("wmq-test-listen", wait=60, conninfo=database_url, listen=f"LISTEN {CHANNEL}")
    plain = Recorder("wmq-test-plain", wait=60)
    waker = DueTimeWaker(database_url, ["whatsapp"])  # nothing due: it sleeps its longest
    for thread in (listening, plain, waker):
        thread.start()
    wait_until(lambda: listening.rounds and plain.rounds and backends(database_url, "wmq-waker"), 10,
               "a first round of each")
    time.sleep(0.2)  # not a wait for a condition: each is now well into its 60 s (or 5 s) wait
    for thread in (listening, plain, waker):
        stopped_within(thread, 1.0)
    assert len(listening.rounds) == 1 and len(plain.rounds) == 1


# -- a lost database ------------------------------------------------------------------------------

def test_a_lost_connection_is_replaced_and_its_rounds_go_on(database_url: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    thread = Recorder("wmq-test-reconnect", wait=60, conninfo=database_url, listen=f"LISTEN {CHANNEL}")
    thread.start()
    try:
        wait_until(lambda: thread.rounds, 10, "a first round")
        notify(database_url)  # it listens: a NOTIFY ends its 60 s wait
        wait_until(lambda: len(thread.rounds) == 2, 5, "a round at the NOTIFY")
        first = thread.rounds[0]
        assert first is not None and thread.rounds == [first, first]
        assert backends(database_url, "wmq-test-reconnect") == [first]

        terminate(database_url, first)  # the database drops it, as in a restart or a failover
        lost = time.monotonic()
        wait_until(lambda: len(thread.rounds) == 3, 5, "a round on a new connection")
        took = time.monotonic() - lost
        second = thread.rounds[2]
        assert second not in (None, first)
        assert took < 1.5, f"back {took:.2f}s after the connection was lost"
        wait_until(lambda: backends(database_url, "wmq-test-reconnect") == [second], 5, "only the new connection")

        notify(database_url)  # the new connection listens too
        wait_until(lambda: len(thread.rounds) == 4, 5, "a round at a NOTIFY on the new connection")
        assert thread.rounds[3] == second
    finally:
        stopped_within(thread, 1.0)
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == log.name]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "wmq-test-reconnect: lost its connection" in failures[0].getMessage()
    assert failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], psycopg.OperationalError)
    assert failures[0].thread_name == "wmq-test-reconnect"  # type: ignore[attr-defined]
    assert any(r.getMessage() == "wmq-test-reconnect: working again after 1 failures" for r in caplog.records)


def test_the_due_time_waker_reconnects_after_its_connection_is_killed(database_url: str) -> None:
    waker = DueTimeWaker(database_url, ["whatsapp"])
    waker.start()
    try:
        first = wait_until(lambda: backends(database_url, "wmq-waker"), 10, "the waker's connection")
        terminate(database_url, first[0])
        again = wait_until(lambda: [p for p in backends(database_url, "wmq-waker") if p != first[0]], 5,
                           "the waker's new connection")
        assert len(again) == 1 and waker.is_alive()
    finally:
        stopped_within(waker, 1.0)


def test_connecting_again_backs_off_to_its_cap_and_logs_one_traceback(database_url: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    thread = Recorder("wmq-test-backoff", wait=60, conninfo=f"postgresql://wmq@127.0.0.1:{refused_port()}/none",
                      retry=0.05, max_retry=0.2)
    thread.start()
    try:
        wait_until(lambda: len(thread.attempts) >= 6, 10, "six connection attempts")
        gaps = [b - a for a, b in zip(thread.attempts, thread.attempts[1:], strict=False)][:5]
        for gap, wait in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2], strict=True):
            assert wait - 0.01 <= gap < wait + 0.5, (gaps, "backs off 0.05, 0.1, then 0.2 s at most")
        assert thread.rounds == []
        thread.conninfo = database_url  # the database is back
        wait_until(lambda: thread.rounds, 5, "a round once the database is back")
    finally:
        stopped_within(thread, 1.0)
    failures = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == log.name]
    assert len(failures) >= 6 and all("wmq-test-backoff: cannot connect to the database" in r.getMessage()
                                      for r in failures)
    assert [bool(r.exc_info) for r in failures[:3]] == [True, False, False]  # one traceback per outage
    assert any(r.getMessage().startswith("wmq-test-backoff: working again after") for r in caplog.records)


# -- a round that raises ----------------------------------------------------------------------------

def test_a_crash_in_one_round_is_logged_and_the_loop_goes_on(database_url: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    plain = Recorder("wmq-test-crash", wait=0.01, crash=(2,), retry=0.2)
    connected = Recorder("wmq-test-crash-conn", wait=0.01, crash=(2,), retry=0.2, conninfo=database_url)
    for thread in (plain, connected):
        thread.start()
    try:
        wait_until(lambda: len(plain.rounds) >= 5 and len(connected.rounds) >= 5, 10, "rounds after the crash")
    finally:
        for thread in (plain, connected):
            stopped_within(thread, 1.0)
    for thread in (plain, connected):
        crashes = [r for r in caplog.records if r.levelno == logging.WARNING and r.thread_name == thread.name]  # type: ignore[attr-defined]
        assert len(crashes) == 1
        assert crashes[0].getMessage() == f"{thread.name}: round failed; trying again in 0.2 s"
        assert crashes[0].exc_info is not None and str(crashes[0].exc_info[1]) == "round 2 broke"
    # A thread with a connection of its own takes a new one after a failed round (it may be what failed).
    assert len(set(connected.rounds[:2])) == 1 and connected.rounds[2] != connected.rounds[1]
    assert len(set(plain.rounds)) == 1 and plain.rounds[0] is None


def test_the_heartbeat_goes_on_after_a_round_that_raises(database_url: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    alive = tmp_path / "alive"
    heartbeat = Heartbeat(database_url, uuid4(), interval=0.05, ttl=1.0, alive_file=alive)
    beat, calls = heartbeat.beat, []

    def breaks_once() -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("a bug, not the database")
        return beat()

    heartbeat.beat = breaks_once  # type: ignore[method-assign]
    heartbeat.start()
    try:
        wait_until(lambda: len(calls) >= 5, 10, "beats after the one that raised")
        touched = wait_until(alive.exists, 5, "the alive file") and alive.stat().st_mtime_ns
        wait_until(lambda: alive.stat().st_mtime_ns > touched, 5, "the alive file touched again")
    finally:
        stopped_within(heartbeat, 1.0)
    assert any(r.getMessage().startswith("wmq-heartbeat: round failed") for r in caplog.records)
