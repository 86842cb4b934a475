"""A running service for one test: the API (uvicorn) and worker processes, as `wmq` starts them.

Processes are real; only WhatsApp is simulated. Helpers wait on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import httpx
import psutil
import psycopg
from psycopg.rows import dict_row

from service.core.context import Core
from service.core.enqueue import enqueue
from service.core.models import Enqueued, MessageRequest
from service.db.pools import make_async_pool, make_pool
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-of-at-least-32-characters"
T = TypeVar("T")

#: Settings for fast, deterministic tests: no jitter, quick polls and liveness.
TEST_ENV = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "MESSAGE_QUEUE_MIN_JITTER": "0",
    "MESSAGE_QUEUE_MAX_JITTER": "0",
    "MESSAGE_QUEUE_POLL_INTERVAL": "50ms",
    "MESSAGE_QUEUE_WORKER_THREADS": "4",
    "MESSAGE_QUEUE_HEARTBEAT_INTERVAL": "1s",
    "MESSAGE_QUEUE_HEARTBEAT_TTL": "5s",
    "MESSAGE_QUEUE_LEASE_INTERVAL": "500ms",
    "MESSAGE_QUEUE_MAINTENANCE_INTERVAL": "2s",
    "MESSAGE_QUEUE_JOB_TIMEOUT": "4s",
    "MESSAGE_QUEUE_RETRY_MIN_BACKOFF": "100ms",
    "MESSAGE_QUEUE_RETRY_MAX_BACKOFF": "1s",
    "LOG_LEVEL": "INFO",
    # The tests' webhook receivers and media servers listen on 127.0.0.1, which the service
    # refuses by default (service/outbound.py); tests of that refusal set OUTBOUND_ALLOW="".
    "OUTBOUND_ALLOW": "127.0.0.1",
}


def wait_until(condition: Callable[[], T], timeout: float, message: str = "condition", interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def run_child_check(module: str, *args: str, timeout: float = 120, **env: str) -> str:
    """Run `python -m tests.<module> <args>` from this checkout and return what it printed; fail
    with its output unless it exits 0. Checks that load neonize's Go library run so: a Go panic
    ends the child, never pytest."""
    result = subprocess.run([sys.executable, "-m", f"tests.{module}", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **env})
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    print(result.stdout)  # what it measured, for -s
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self, database_url: str, log_dir: Path, env: dict[str, Any]) -> None:
        self.database_url = database_url
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = {
            **os.environ, **TEST_ENV, **{k: str(v) for k, v in env.items()},
            "DATABASE_URL": database_url, "PORT": str(self.port), "DATA_DIR": str(log_dir / "data"),
        }
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self._spawned = 0
        self.log_files: dict[int, Path] = {}

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        self._spawned += 1
        path = self.log_dir / f"{command}{self._spawned}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", command],
            cwd=ROOT, env=self.env, stdout=open(path, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        )
        self.log_files[process.pid] = path
        return process

    def start(self, workers: int = 1) -> None:
        self.start_api()
        for _ in range(workers):
            self.start_worker()

    def start_api(self) -> None:
        """Start the API and wait until it serves on its own port. A port found free can be taken
        by a test running in parallel (another xdist worker) before the API binds it, and that
        test's API would answer `/readyz`: the API must say it bound the port, and if it could not,
        it is started again on another one."""
        for _ in range(5):
            self.api = self._spawn("api")
            if wait_until(self._api_started, 30, "the API to be ready") == "serving":
                return
            self._use_port(free_port())
        raise AssertionError(f"the API found no free port\n{self.logs()}")

    def _api_started(self) -> str | None:
        """"serving", "port taken", or None while it starts."""
        assert self.api is not None
        if self.api.poll() is not None:
            assert "address already in use" in self.log_files[self.api.pid].read_text(), self.logs()
            return "port taken"
        try:
            sockets = psutil.Process(self.api.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return None  # it has just exited: the next look says why
        if not any(s.status == psutil.CONN_LISTEN and s.laddr.port == self.port for s in sockets):
            return None
        try:
            return "serving" if self.http.get("/readyz").status_code == 200 else None
        except httpx.TransportError:
            return None

    def _use_port(self, port: int) -> None:
        self.port = port
        self.env["PORT"] = str(port)
        self.http.close()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start a worker process and wait until it has registered with the broker."""
        before = self.live_workers()
        worker = self._spawn("worker")
        self.workers.append(worker)

        def registered() -> bool:
            assert worker.poll() is None, self.logs()
            return self.live_workers() > before

        wait_until(registered, 30, "the worker to register")
        return worker

    def worker_process(self, worker_id: UUID | str) -> subprocess.Popen[bytes]:
        """The worker process whose broker identity is `worker_id` (from its start-up log)."""
        for process in self.workers:
            if f'"worker_id": "{worker_id}"' in self.log_files[process.pid].read_text():
                return process
        raise AssertionError(f"no worker process with id {worker_id}")

    def live_workers(self) -> int:
        row = self.one("SELECT count(*) AS n FROM dramatiq.worker WHERE heartbeat_at > now() - interval '5 seconds'")
        return int(row["n"])

    def stop_process(self, process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if process.poll() is None:
            process.send_signal(sig)
        return process.wait(timeout=timeout)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                self.stop_process(worker)
        if self.api and self.api.poll() is None:
            self.stop_process(self.api)
        self.http.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.log_dir.glob("*.log")))

    # -- database -------------------------------------------------------------------------------

    def all(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(query, params).fetchall()

    def one(self, query: str, params: Any = None) -> dict[str, Any]:
        rows = self.all(query, params)
        assert len(rows) == 1, rows
        return rows[0]

    def counts(self) -> dict[str, int]:
        """Row counts of every table a request could write to."""
        tables = ["instances", "instance_queues", "messages", "message_events", "dramatiq.queue"]
        return {t: int(self.one(f"SELECT count(*) AS n FROM {t}")["n"]) for t in tables}

    @contextlib.contextmanager
    def core(self) -> Iterator[Core]:
        """A Core on this stack's database, as the API builds it, for direct calls. Its async pool
        lives on an event loop of its own thread; `enqueue` runs the core's enqueue there."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        pool = make_pool(self.database_url, max_size=8, name="wmq-test")
        async_pool = asyncio.run_coroutine_threadsafe(
            make_async_pool(self.database_url, max_size=8, name="wmq-test"), loop).result()
        self._loop = loop
        try:
            yield Core(pool, Settings(message_queue_min_jitter=0, message_queue_max_jitter=0), async_pool)
        finally:
            asyncio.run_coroutine_threadsafe(async_pool.close(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            pool.close()

    def enqueue(self, core: Core, instance_id: UUID, request: MessageRequest) -> Enqueued:
        """`service.core.enqueue.enqueue`, from a test thread (inside `with stack.core()`)."""
        return asyncio.run_coroutine_threadsafe(enqueue(core, instance_id, request), self._loop).result()

    # -- API --------------------------------------------------------------------------------------

    def create_instance(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/instances", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    @staticmethod
    def base(instance: dict[str, Any]) -> str:
        return f"/instances/{instance['id']}/token/{instance['token']}"

    def send_text(self, instance: dict[str, Any], message: str = "hello", **fields: Any) -> dict[str, Any]:
        body = {"phone": "5511999999999", "message": message, **fields}
        response = self.http.post(f"{self.base(instance)}/send-text", json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def simulate(self, instance: dict[str, Any], **knobs: Any) -> dict[str, Any]:
        response = self.http.post(f"/simulator/instances/{instance['id']}", json=knobs,
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def events(self, instance: dict[str, Any] | UUID | str) -> list[dict[str, Any]]:
        """The simulator's record for the instance, straight from the database."""
        instance_id = instance["id"] if isinstance(instance, dict) else instance
        return self.all("SELECT * FROM simulator_events WHERE instance_id = %s ORDER BY id", (instance_id,))

    def sends(self, instance: dict[str, Any] | UUID | str) -> list[dict[str, Any]]:
        return [e for e in self.events(instance) if e["kind"] == "send"]

    def statuses(self, zaap_ids: list[str]) -> dict[str, str]:
        rows = self.all("SELECT zaap_id, status FROM messages WHERE zaap_id = ANY(%s)", (zaap_ids,))
        return {r["zaap_id"]: r["status"] for r in rows}

    def job(self, zaap_id: str) -> dict[str, Any]:
        return self.one("SELECT * FROM messages WHERE zaap_id = %s", (zaap_id,))

    def wait_status(self, zaap_id: str, status: str, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(zaap_id)
            return job if job["status"] == status else None

        return wait_until(reached, timeout, f"{zaap_id} to be {status}", interval=0.02)

    def history(self, zaap_id: str) -> list[dict[str, Any]]:
        return self.all("SELECT * FROM message_events WHERE zaap_id = %s ORDER BY id", (zaap_id,))

    def wait_completed(self, zaap_ids: list[str], timeout: float) -> None:
        def done() -> bool:
            statuses = self.statuses(zaap_ids)
            return len(statuses) == len(zaap_ids) and all(s == "completed" for s in statuses.values())

        try:
            wait_until(done, timeout, f"{len(zaap_ids)} messages to complete", interval=0.2)
        except AssertionError:
            pending = [(z, s) for z, s in self.statuses(zaap_ids).items() if s != "completed"]
            raise AssertionError(f"{len(pending)} not completed: {pending[:10]}\n{self.logs()}") from None
