"""Pairing a WhatsApp account, in a child process that can always be abandoned.

A pairing attempt cannot be stopped from inside the process that started it: when the QR window
runs out, neonize's Go side waits for the account id forever without looking at its stop
signal, a stop during the window leaves the QR loop blocked, and neonize's connect thread is not
a daemon, so the worker would hang at exit. So each attempt runs in a child process
(`python -m workers.transports.neonize.pairing`) that the session kills when the attempt is
over, whatever the Go side is doing.

The child speaks JSON lines on stdout, each after `MARKER` (neonize and Go print lines of their
own there): `{"qr": code}` for every new QR code, `{"code": code}` for a phone pairing code,
`{"paired": jid}` once the phone has linked the device (the store holds it from then on),
`{"connected": true}` once that first login went through, `{"failed": reason}`. It exits when
the attempt is over; the parent kills it at its deadline.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from workers.transports.neonize import bottag

logger = logging.getLogger("wmq.whatsapp")

MARKER = "WMQ-PAIRING "
#: The child's command; tests point it at a stand-in for WhatsApp's side.
COMMAND = [sys.executable, "-m", "workers.transports.neonize.pairing"]

Report = Callable[[dict[str, Any]], None]


class PairingAttempt:
    """The parent's side: start the child, hand each line it reports to `report`, and kill it at
    its deadline or on request. Ends with `{"exit": returncode, "stderr": tail}`."""

    def __init__(self, *, store_url: str, key: str, phone: str | None, proxy: str | None, report: Report,
                 deadline: float, command: list[str] | None = None) -> None:
        self.report = report
        self.deadline = deadline
        # The child sends no message, but it loads neonize: with the bot tag off, as every
        # process this service starts (bottag.py).
        env = {**bottag.child_environment(os.environ), "WMQ_PAIRING_STORE": store_url, "WMQ_PAIRING_KEY": key,
               "WMQ_PAIRING_PHONE": phone or "", "WMQ_PAIRING_PROXY": proxy or ""}
        self.process = subprocess.Popen(command or COMMAND, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.expired = False
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._done = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True, name="whatsapp-pairing-stderr").start()
        threading.Thread(target=self._read, daemon=True, name="whatsapp-pairing").start()
        self._timer = threading.Timer(deadline, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(MARKER):
                try:
                    self.report(json.loads(line[len(MARKER):]))
                except Exception:
                    logger.exception("a pairing report could not be handled")
        returncode = self.process.wait()
        self._timer.cancel()
        self._done.set()
        self.report({"exit": returncode, "expired": self.expired, "stderr": "".join(self._stderr)[-2000:]})

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def _expire(self) -> None:
        self.expired = True
        self.kill()

    def kill(self) -> None:
        """End the attempt now (SIGKILL: a Go call blocked forever ignores anything gentler)."""
        if self.process.poll() is None:
            try:
                self.process.kill()
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


# -- the child --------------------------------------------------------------------------------


def emit(**fields: Any) -> None:
    sys.stdout.write(MARKER + json.dumps(fields) + "\n")
    sys.stdout.flush()


def _exit_with_parent(parent: int) -> None:
    """A worker killed outright cannot kill its pairing child: the child notices it was orphaned."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def main() -> None:  # pragma: no cover - runs in the child, tested through it
    from neonize.events import (
        ClientOutdatedEv,
        ConnectedEv,
        ConnectFailureEv,
        LoggedOutEv,
        PairStatusEv,
        TemporaryBanEv,
    )

    from workers.transports.neonize.registry import new_client
    from workers.transports.neonize.sessions import jid_text, proxy_settings

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    phone = os.environ.get("WMQ_PAIRING_PHONE") or None
    client = new_client(os.environ["WMQ_PAIRING_STORE"], os.environ["WMQ_PAIRING_KEY"], None)
    in_window = threading.Event()
    finished = threading.Event()

    def on_qr(_: Any, code: bytes) -> None:
        in_window.set()
        if phone is None:
            emit(qr=code.decode())

    def on_login_status(_: int, status: Any) -> None:
        # whatsmeow's QR channel: "success", "timeout", "err-client-outdated", …
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text != "success":
            emit(failed=f"pairing ended: {text}")
            finished.set()

    def failed(reason: str) -> Callable[[Any, Any], None]:
        def handler(_: Any, event: Any) -> None:
            emit(failed=f"{reason}: {event}".strip().rstrip(":"))
            finished.set()
        return handler

    def on_pair_status(_: Any, event: PairStatusEv) -> None:
        if event.Status == PairStatusEv.SUCCESS:
            emit(paired=jid_text(event.ID))
        else:
            emit(failed=event.Error or "pairing failed")
            finished.set()

    def on_connected(_: Any, event: ConnectedEv) -> None:
        emit(connected=True)
        finished.set()

    client.event.qr(on_qr)
    client._NewClient__onLoginStatus = on_login_status  # neonize only prints it
    client.event(PairStatusEv)(on_pair_status)
    client.event(ConnectedEv)(on_connected)
    client.event(LoggedOutEv)(failed("logged out during pairing"))
    client.event(ConnectFailureEv)(failed("WhatsApp refused the connection"))
    client.event(ClientOutdatedEv)(failed("WhatsApp says this client is outdated"))
    client.event(TemporaryBanEv)(failed("temporarily banned by WhatsApp"))

    def connect() -> None:
        try:
            client.connect(proxy_settings(os.environ.get("WMQ_PAIRING_PROXY") or None))
            emit(failed="the connection closed before pairing finished")
        except Exception as error:
            from workers.transports.neonize.errors import map_error

            emit(failed=str(map_error(error)))
        finished.set()

    threading.Thread(target=connect, daemon=True, name="whatsapp-pairing-connect").start()
    if phone is not None:
        if in_window.wait(60) and not finished.is_set():
            try:
                emit(code=str(client.PairPhone(phone, True)))
            except Exception as error:
                emit(failed=f"WhatsApp refused a phone code: {error}")
                finished.set()
    finished.wait()
    sys.stdout.flush()
    os._exit(0)  # neonize's connect thread is not a daemon and may be blocked in Go for good


if __name__ == "__main__":
    from service.logs import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    main()
