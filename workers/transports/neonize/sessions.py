"""WhatsApp sessions: one neonize client per instance, each connected in a thread of its own.

`connect()` blocks for the life of the connection (and for up to a minute against a network
that accepts and never answers), so it never runs on a message thread. Connection events
become the instance's state in PostgreSQL through the `Listener`; a dead session thread leaves
the instance `disconnected`, never `connected`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from neonize.client import NewClient
from neonize.events import (
    ConnectedEv,
    DisconnectedEv,
    LoggedOutEv,
    PairStatusEv,
    QREv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID
from neonize.utils import build_jid

from workers.transports.neonize.errors import map_error

logger = logging.getLogger("wmq.whatsapp")

#: (instance_id, state, detail, extra) → None. `extra` may hold `qr` or `jid`.
Listener = Callable[[UUID, str, str | None, dict[str, Any]], None]

#: States after which the session does not reconnect by itself (a restart command does).
TERMINAL = ("logged_out", "replaced", "banned")


#: Go calls that touch neonize's client registry (an unsynchronised Go map) go one at a time.
REGISTRY_LOCK = threading.Lock()


def jid_text(jid: JID) -> str:
    """`user:device@server` for a device (as whatsmeow stores it), `user@server` otherwise."""
    device = f":{jid.Device}" if jid.Device else ""
    return f"{jid.User}{device}@{jid.Server}"


def parse_jid(text: str) -> JID:
    """A chat address (`user@server`) or a device address (`user:device@server`)."""
    user, _, server = text.partition("@")
    user, _, device = user.partition(":")
    jid = build_jid(user, server or "s.whatsapp.net")
    if device.isdigit():
        jid.Device = int(device)
    return jid


class Session:
    """One instance's WhatsApp connection and the state it is in."""

    def __init__(self, instance_id: UUID, store_url: str, jid: str | None, listener: Listener, *,
                 proxy: str | None = None, max_backoff: float = 60.0,
                 device_exists: Callable[[str], bool] = lambda jid: True) -> None:
        self.instance_id = instance_id
        self.store_url = store_url
        self.jid = jid
        self.listener = listener
        self.proxy = proxy
        self.max_backoff = max_backoff
        self.device_exists = device_exists
        self.generation = 0
        self._was_connected = False
        self.state = "disconnected"
        self.detail: str | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self.client = self._new_client()
        self.thread = threading.Thread(target=self._run, name=f"whatsapp-{instance_id}", daemon=True)

    # -- the client and its events ------------------------------------------------------------

    def _new_client(self) -> NewClient:
        # whatsmeow panics (ending the process) on a JID whose device is not in the store: a
        # stale or partial JID means pairing anew.
        if self.jid and not self.device_exists(self.jid):
            logger.warning("stored WhatsApp device not found; pairing anew",
                           extra={"instance_id": str(self.instance_id), "jid": self.jid})
            self.jid = None
        # A fresh registry key per client: a replaced client's finalizer stops only itself.
        self.generation += 1
        with REGISTRY_LOCK:
            client = NewClient(self.store_url, jid=parse_jid(self.jid) if self.jid else None,
                               uuid=f"{self.instance_id}/{self.generation}", new_device=self.jid is None)
        event = client.event
        event.qr(self._on_qr_code)
        event(QREv)(self._on_qr)
        event(PairStatusEv)(self._on_pair_status)
        event(ConnectedEv)(self._on_connected)
        event(DisconnectedEv)(self._on_disconnected)
        event(LoggedOutEv)(self._on_logged_out)
        event(StreamReplacedEv)(self._on_replaced)
        event(TemporaryBanEv)(self._on_ban)
        return client

    def _set(self, state: str, detail: str | None = None, **extra: Any) -> None:
        self.state, self.detail = state, detail
        if state == "connected":
            self._was_connected = True
        logger.info("whatsapp session state", extra={"instance_id": str(self.instance_id), "state": state,
                                                       "detail": detail})
        try:
            self.listener(self.instance_id, state, detail, extra)
        except Exception:  # never let a database error reach the Go callback
            logger.exception("could not record the session state", extra={"instance_id": str(self.instance_id)})

    def _on_qr_code(self, client: NewClient, code: bytes) -> None:
        self._set("qr", "scan the QR code with WhatsApp", qr=code.decode())

    def _on_qr(self, client: NewClient, event: QREv) -> None:
        if event.Codes:
            self._set("qr", "scan the QR code with WhatsApp", qr=event.Codes[0])

    def _on_pair_status(self, client: NewClient, event: PairStatusEv) -> None:
        if event.Status == PairStatusEv.SUCCESS:
            self.jid = jid_text(event.ID)
            self._set("paired", None, jid=self.jid)
        else:
            self._set("pair_failed", event.Error or "pairing failed")

    def _on_connected(self, client: NewClient, event: ConnectedEv) -> None:
        if self._stopping.is_set() or client is not self.client:
            _stop_client(client)  # a client that should be gone must not hold the session
            return
        self._set("connected")

    def _on_disconnected(self, client: NewClient, event: DisconnectedEv) -> None:
        if self.state not in TERMINAL:
            self._set("disconnected", "connection lost; reconnecting")

    def _on_logged_out(self, client: NewClient, event: LoggedOutEv) -> None:
        self.jid = None
        reasons = event.DESCRIPTOR.fields_by_name["Reason"].enum_type.values_by_number
        reason = reasons[event.Reason].name if event.Reason in reasons else str(event.Reason)
        self._set("logged_out", f"logged out by WhatsApp ({reason}); pair again", jid=None)

    def _on_replaced(self, client: NewClient, event: StreamReplacedEv) -> None:
        self._set("replaced", "the session was opened elsewhere; restart to take it back")

    def _on_ban(self, client: NewClient, event: TemporaryBanEv) -> None:
        self._set("banned", f"temporarily banned by WhatsApp (code {event.Code}, expires in {event.Expire}s)")

    # -- the connect loop ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 1.0
        try:
            while not self._stopping.is_set():
                if self.state in TERMINAL:
                    self._wake.wait()  # until restart() or stop()
                    self._wake.clear()
                    continue
                self._set("connecting")
                try:
                    self.client.connect(self._proxy_settings())
                    # connect() returns when the client was stopped: it is not connected now.
                    if self.state not in TERMINAL:
                        self._set("disconnected", "connection closed")
                except Exception as error:
                    self._set("disconnected", str(map_error(error)))
                if self._stopping.is_set():
                    break
                if self._was_connected:
                    backoff, self._was_connected = 1.0, False
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            if self.state not in TERMINAL:
                self._set("disconnected", "session stopped")

    def _proxy_settings(self) -> Any:
        if not self.proxy:
            return None
        from neonize._binder import ProxySettings

        return ProxySettings(proxy_address=self.proxy)

    # -- control --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        # Our own record of the events: the client's is_connected blocks during a hung connect.
        return self.state == "connected"

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the session; a client stuck in a connect is left to die with the process."""
        self._stopping.set()
        self._wake.set()
        stopper = threading.Thread(target=_stop_client, args=(self.client,), daemon=True)
        stopper.start()
        stopper.join(timeout)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def restart(self) -> None:
        """Drop the connection and connect again (a new pairing if the session was logged out)."""
        old = self.client
        self.client = self._new_client()
        threading.Thread(target=_stop_client, args=(old,), daemon=True).start()
        self.state = "disconnected"
        self._wake.set()

    def logout(self) -> None:
        """Unlink this device from the phone; the instance must be paired again."""
        self.client.logout()
        self.jid = None
        self._set("logged_out", "logged out on request; pair again", jid=None)
        threading.Thread(target=_stop_client, args=(self.client,), daemon=True).start()

    def pair_phone(self, phone: str) -> str:
        """An 8-character code to type in WhatsApp (Linked devices → Link with phone number)."""
        return str(self.client.PairPhone(phone, True))


def _stop_client(client: NewClient) -> None:
    with REGISTRY_LOCK:
        client.stop()
