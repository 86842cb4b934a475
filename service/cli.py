"""`wmq`: the service's commands.

    wmq run       API + worker (+ embedded PostgreSQL when DATABASE_URL is unset), Ctrl-C stops all
    wmq api       the HTTP API alone (containers)
    wmq worker    one worker process alone (containers, `kubectl scale`)
    wmq migrate   apply the SQL migrations and exit
    wmq healthcheck [api|worker]
                  exit 0 if this container's process is alive (the image's HEALTHCHECK, the
                  worker's liveness probe): the API answers /healthz; a worker's heartbeat thread
                  has gone round lately (even with the database away: an outage is not a death)
                  and, with WHATSAPP_TRANSPORT=neonize, the WhatsApp library loads
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from service.db.embedded import start_embedded_postgres
from service.db.migrations import migrate
from service.logs import configure_logging
from service.settings import Settings, get_settings

logger = logging.getLogger("wmq")


def database_url(settings: Settings) -> tuple[str, Any]:
    """DATABASE_URL, or the embedded server's (with its handle, which keeps it alive)."""
    if settings.database_url:
        return settings.database_url, None
    server = start_embedded_postgres(settings.data_dir)
    return server.get_uri(), server


def admin_token(settings: Settings) -> str:
    """ADMIN_TOKEN, or one generated once and kept in DATA_DIR/admin_token."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_hex(20)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def cmd_migrate(settings: Settings) -> int:
    url, _server = database_url(settings)
    applied = migrate(url)
    logger.info("migrations done", extra={"applied": ",".join(applied) or "none"})
    return 0


def cmd_api(settings: Settings) -> int:
    import uvicorn

    from service.api.app import create_app
    from workers.transports.simulator import SimulatorControl

    url, _server = database_url(settings)
    migrate(url)
    if not settings.admin_token:
        settings = settings.model_copy(update={"admin_token": admin_token(settings)})
    # The composition root: the API reaches the simulator's knobs through this, not an import.
    app = create_app(settings, url, controls={"simulator": SimulatorControl, "simulator-session": SimulatorControl})
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                access_log=False, timeout_graceful_shutdown=10)
    return 0


def cmd_worker(settings: Settings) -> int:
    from workers.main import run_worker

    url, server = database_url(settings)
    migrate(url)
    code = run_worker(settings, url)
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        # A WhatsApp connect stuck in the Go library (up to a minute against a network that never
        # answers) runs on a thread Python would wait for: everything is recorded, so leave now.
        logger.warning("leaving without waiting for a stuck WhatsApp connect")
        if server is not None:
            server.cleanup()
        logging.shutdown()
        os._exit(code)
    return code


def cmd_run(settings: Settings) -> int:
    """Everything a newcomer needs, in one foreground command."""
    url, server = database_url(settings)
    migrate(url)
    token = admin_token(settings)
    env = {**os.environ, "DATABASE_URL": url, "ADMIN_TOKEN": token}
    children = [
        subprocess.Popen([sys.executable, "-m", "service.cli", "api"], env=env),
    ]
    if settings.message_queue_enabled:
        children.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env))
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"\n  WhatsApp message queue: API {base} (transport: {settings.whatsapp_transport})\n"
        f"  Database: {'embedded PostgreSQL in ' + str(settings.data_dir / 'pg') if server else 'DATABASE_URL'}\n"
        f"  Admin token: {token}\n\n"
        f"  Create an instance:\n"
        f"    curl -s -X POST {base}/instances -H 'Authorization: Bearer {token}'\n"
        f"  Send a message (with the id and token it returns):\n"
        f"    curl -s {base}/instances/ID/token/TOKEN/send-text -H 'Content-Type: application/json' \\\n"
        f"      -d '{{\"phone\": \"5511999999999\", \"message\": \"hello\", \"delayTyping\": 2}}'\n\n"
        f"  Dashboard: {base}/dashboard (log in with the admin token)   API reference: {base}/docs\n\n"
        f"  Ctrl-C stops everything.\n",
        flush=True,
    )

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    while not stopping:
        for child in children:
            if child.poll() is not None:
                logger.error("a process exited; stopping", extra={"pid": child.pid, "code": child.returncode})
                stopping, code = True, 1
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
    return code


#: What a worker imports to send through each transport that loads native code (the transports
#: of workers/transports/__init__.py; the simulator loads none). neonize's modules load its Go
#: library and python-magic, which needs the system's libmagic (the Dockerfile installs it).
TRANSPORT_MODULES = {"neonize": ("magic", "workers.transports.neonize.transport")}

#: What the child that loads them may take: the probes allow 10 s (k8s/worker.yaml, the Dockerfile).
TRANSPORT_LOAD_TIMEOUT = 8.0


def transport_load_error(transport: str, timeout: float = TRANSPORT_LOAD_TIMEOUT) -> str | None:
    """Why the worker could not load `transport`'s library, or None. In a child process: Go's
    runtime, once loaded, would stay in this one, and its panics end the process that loads it."""
    modules = TRANSPORT_MODULES.get(transport)
    if not modules:
        return None
    code = "import importlib\n" + "".join(f"importlib.import_module({name!r})\n" for name in modules)
    try:
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"loading it took more than {timeout:.0f}s"
    except OSError as error:
        return f"no Python to load it with: {error}"
    if child.returncode == 0:
        return None
    lines = [line.strip() for line in child.stderr.splitlines() if line.strip()]
    # A Python error's last line says it ("ImportError: failed to find libmagic…"); a Go panic's first.
    reason = next((line for line in lines if line.startswith(("panic:", "fatal error:"))), None)
    return reason or (lines[-1] if lines else f"exit code {child.returncode}")


def cached_transport_load_error(settings: Settings) -> str | None:
    """`transport_load_error`, checked once per container: whether a library loads is the image's
    property, so later probes read the first one's answer (a child that loads Go costs ~1 s of
    CPU: a probe every 20 s would cost a worker pod 4 % of a core)."""
    record = settings.data_dir / f"transport-check-{settings.whatsapp_transport}"
    try:
        text = record.read_text()
        return text or None
    except OSError:
        pass
    error = transport_load_error(settings.whatsapp_transport)
    try:
        record.write_text(error or "")
    except OSError:
        pass  # an unwritable DATA_DIR: checked again next time
    return error


def cmd_healthcheck(settings: Settings, role: str | None = None) -> int:
    """0 if alive. Without a role: the worker's check where a worker has run here, else the API's.

    A worker is also unhealthy when it cannot load the library of the transport new instances get
    (WHATSAPP_TRANSPORT=neonize): an image without libmagic, say, would otherwise run and start no
    WhatsApp session, and the probe's failure is what Kubernetes shows (events, restarts). With the
    simulator (development, tests) neonize is not checked: a library the deployment does not use
    must not restart its workers."""
    alive = settings.worker_alive_file
    if role == "worker" or (role is None and alive.exists()):
        limit = 3 * settings.message_queue_heartbeat_interval + 5
        try:
            age = time.time() - alive.stat().st_mtime
        except OSError:
            print(f"unhealthy: no heartbeat file at {alive}", file=sys.stderr)
            return 1
        if age > limit:
            print(f"unhealthy: the heartbeat thread last went round {age:.0f}s ago (limit {limit:.0f}s)",
                  file=sys.stderr)
            return 1
        error = cached_transport_load_error(settings)
        if error is not None:
            print(f"unhealthy: {settings.whatsapp_transport} cannot be loaded: {error}", file=sys.stderr)
            return 1
        return 0
    import urllib.request

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/healthz", timeout=5) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1


COMMANDS = {"run": cmd_run, "api": cmd_api, "worker": cmd_worker, "migrate": cmd_migrate,
            "healthcheck": cmd_healthcheck}


#: neonize's Go library adds `<bot biz_bot="1"/>` (an AI/bot label on the contact's phone) to every
#: one-to-one message unless the process was *started* with this set to off: Go reads the
#: environment block the process began with, so setting it from Python is too late
#: (workers/transports/neonize/bottag.py). The commands that may load it start again with it set.
BOT_TAG = "NEONIZE_BOT_TAG"
LOADS_NEONIZE = ("worker", "run")


def start_without_bot_tag(command: str) -> None:
    """Re-exec this process with NEONIZE_BOT_TAG=off if it may load neonize and nobody chose."""
    if command in LOADS_NEONIZE and not os.environ.get(BOT_TAG, "").strip():
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, BOT_TAG: "off"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wmq", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("role", nargs="?", choices=("api", "worker"), help="healthcheck: which process to check")
    args = parser.parse_args(argv)
    if args.role and args.command != "healthcheck":
        parser.error("only healthcheck takes a role")
    try:
        settings = get_settings()
    except Exception as error:  # a bad setting is refused at start, with the reason
        print(f"wmq: invalid settings: {error}", file=sys.stderr)
        return 2
    if args.command == "healthcheck":  # quiet, quick, and creates nothing
        return cmd_healthcheck(settings, args.role)
    if argv is None:
        start_without_bot_tag(args.command)
    configure_logging(settings.log_level)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return COMMANDS[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
