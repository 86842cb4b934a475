"""WhatsApp sessions: one neonize client per paired instance, each connected in a thread of its own.

An instance with no WhatsApp account linked stays `unpaired` and connects nothing until someone
asks for a QR code or a phone code; then a pairing attempt runs in a child process
(pairing.py) that is killed when it is over, and once the phone has linked the device the
session connects with it here.

`connect()` blocks for the life of the connection (and for up to a minute against a network
that accepts and never answers), so it never runs on a message thread. Connection events
become the instance's state in PostgreSQL through the `Listener`; a dead session thread leaves
the instance `disconnected`, never `connected`. Every call into the Go library goes through
`REGISTRY` (registry.py), and every dial through this process's gate (gate.py).

Only the session's own loop connects: whatsmeow's automatic reconnects are refused at the gate,
and before each connect the loop asks `may_connect` whether this worker still holds the
instance's lease with the fence it started under; when it does not, the session ends (a worker
that stood still past its lease must not take the connection back from the new owner). A
session `replaced` while it holds the lease takes the connection back after a backoff.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from neonize._binder import ProxySettings
from neonize.client import NewClient
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    KeepAliveRestoredEv,
    KeepAliveTimeoutEv,
    LoggedOutEv,
    ReceiptEv,
    StreamErrorEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, Receipt
from neonize.utils import build_jid
from neonize.utils.enum import Presence

from workers.transports.neonize.errors import map_error
from workers.transports.neonize.gate import GATE, GateRefused
from workers.transports.neonize.pairing import PairingAttempt
from workers.transports.neonize.registry import CONNECTS, REGISTRY, Connecting, client_key, new_client, stop_client
from workers.transports.neonize.store import Store

logger = logging.getLogger("wmq.whatsapp")

#: (instance_id, state, detail, extra) → None. `extra` may hold `qr` or `jid`.
Listener = Callable[[UUID, str, str | None, dict[str, Any]], None]
#: (instance_id, WhatsApp message ids, kind, when) → None; kind: delivered, read, played.
ReceiptListener = Callable[[UUID, list[str], str, datetime], Any]

#: Receipts from the contact for messages we sent (the `…_SELF` ones come from our own devices).
RECEIPT_KINDS = {Receipt.DELIVERED: "delivered", Receipt.READ: "read", Receipt.PLAYED: "played"}

#: States after which the session does not reconnect by itself (a restart command does; a
#: temporary ban ends by itself).
TERMINAL = ("logged_out", "replaced", "banned", "outdated")
UNPAIRED_DETAIL = "no WhatsApp account linked: request a QR code or a phone code to pair"
#: Keepalive failures in a row after which the connection is dropped and made anew.
KEEPALIVE_LIMIT = 3
#: Refusals WhatsApp gives for a passing trouble of its own: the usual backoff.
PASSING_FAILURES = ("INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE")
#: Any other refusal we have no answer for: a first wait, doubled at each refusal in a row, to a cap.
UNKNOWN_FAILURE_FIRST = 60.0
UNKNOWN_FAILURE_CAP = 3600.0
#: After `replaced` while this worker holds the lease: a first wait before taking the connection
#: back, doubled at each replacement in a row, to a cap.
REPLACED_FIRST = 10.0
REPLACED_CAP = 600.0
#: WhatsApp's reach-out time-lock (463): the account may not start conversations for a while, and
#: says neither for how long nor (to neonize) when it ends. Sends wait this long before the head is
#: tried again, doubled at each refusal in a row, to a cap; a restart tries at once.
RESTRICTED_FIRST = 300.0
RESTRICTED_CAP = 7200.0
LEASE_LOST_DETAIL = "this worker no longer holds the session's lease: another worker holds the session"

#: Whether this worker still holds the instance's lease, with the fence its session started under.
LeaseCheck = Callable[[], bool]
ClientFactory = Callable[[str, str, "JID | None"], Any]


class PairingRefused(Exception):
    """A pairing request that cannot be met now (the reason says why)."""


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


def proxy_settings(proxy: str | None) -> Any:
    if not proxy:
        return None
    from neonize._binder import ProxySettings

    return ProxySettings(proxy_address=proxy)


def _enum_name(message: Any, field: str, value: int) -> str:
    values = message.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number
    return values[value].name if value in values else str(value)


class Session:
    """One instance's WhatsApp connection and the state it is in."""

    def __init__(self, instance_id: UUID, store: Store, jid: str | None, listener: Listener, *,
                 proxy: str | None = None, max_backoff: float = 60.0,
                 pairing_deadline: float = 170.0, pairing_command: list[str] | None = None,
                 on_receipt: ReceiptListener | None = None, announce_available: bool = True,
                 may_connect: LeaseCheck | None = None, client_factory: ClientFactory = new_client) -> None:
        self.instance_id = instance_id
        self.store = store
        self.jid = jid
        self.listener = listener
        self.proxy = proxy
        self.max_backoff = max_backoff
        self.pairing_deadline = pairing_deadline
        self.pairing_command = pairing_command
        self.on_receipt = on_receipt or (lambda *args: None)
        self.announce_available = announce_available
        self.may_connect = may_connect or (lambda: True)
        self.client_factory = client_factory
        #: The session ended itself (its lease moved): the manager makes a new one if it gets it back.
        self.ended = False
        self._unknown_failures = 0
        self._replacements = 0
        self._retry_after: float | None = None
        #: Reach-out time-locks (463) in a row, and the timer that lifts the current one.
        self.restrictions = 0
        self._lift: threading.Timer | None = None
        self._was_connected = False
        self.state = "disconnected"
        self.detail: str | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._banned_until = 0.0
        # Pairing: the attempt under way (a child process) and what it reported.
        self._pair_lock = threading.Lock()
        self.pairing: PairingAttempt | None = None
        self._attempts = 0
        self._pair_phone: str | None = None
        self._pair_code: str | None = None
        self._pair_failure: str | None = None
        self._pair_answered = threading.Event()
        self.client: NewClient | None = self._new_client()
        self.thread = threading.Thread(target=self._run, name=f"whatsapp-{instance_id}", daemon=True)

    # -- the client and its events ------------------------------------------------------------

    def _new_client(self) -> NewClient | None:
        """A client for the paired device; None while there is none to connect."""
        # whatsmeow panics (ending the process) on a JID whose device is not in the store: a
        # stale or partial JID means pairing anew.
        if self.jid and not self.store.device_exists(self.jid):
            logger.warning("stored WhatsApp device not found; pairing anew",
                           extra={"instance_id": str(self.instance_id), "jid": self.jid})
            self.jid = None
            self._set("unpaired", "the linked WhatsApp device is no longer in the session store; pair again",
                      jid=None)
        if self.jid is None:
            return None
        key = client_key(self.instance_id)
        client = self.client_factory(self.store.url(key), key, parse_jid(self.jid))
        event = client.event
        for kind, handler in (
            (ConnectedEv, self._on_connected),
            (DisconnectedEv, self._on_disconnected),
            (LoggedOutEv, self._on_logged_out),
            (StreamReplacedEv, self._on_replaced),
            (TemporaryBanEv, self._on_ban),
            (ConnectFailureEv, self._on_connect_failure),
            (ClientOutdatedEv, self._on_outdated),
            (StreamErrorEv, self._on_stream_error),
            (KeepAliveTimeoutEv, self._on_keepalive_timeout),
            (KeepAliveRestoredEv, self._on_keepalive_restored),
            (ReceiptEv, self._on_receipt),
        ):
            event(kind)(self._current_only(handler))
        return client

    def _current_only(self, handler: Callable[[NewClient, Any], None]) -> Callable[[NewClient, Any], None]:
        """Events of a client the session has replaced change nothing (a late `Connected` stops it)."""
        @functools.wraps(handler)
        def wrapped(client: NewClient, event: Any) -> None:
            if client is not self.client:  # a replaced client: it must not move this session
                if isinstance(event, ConnectedEv):
                    threading.Thread(target=stop_client, args=(client,), daemon=True).start()
                return
            handler(client, event)
        return wrapped

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

    def _drop_connection(self, connect: Connecting | None = None) -> None:
        """whatsmeow does not reconnect after this event: end the connect (the one under way now,
        or `connect`; never a later one of the same client), and the loop makes a new one after
        its backoff (or waits, for a terminal state)."""
        client = self.client
        if client is not None:
            connect = connect or CONNECTS.get(client.uuid.decode())
            threading.Thread(target=stop_client, args=(client,), kwargs={"connect": connect} if connect else {},
                             daemon=True).start()
        self._wake.set()

    def _on_connected(self, client: NewClient, event: ConnectedEv) -> None:
        if self._stopping.is_set():
            threading.Thread(target=stop_client, args=(client,), daemon=True).start()
            return
        self._unknown_failures = self._replacements = 0
        self._set("connected")
        if self.announce_available:
            threading.Thread(target=self._announce, args=(client,), daemon=True).start()

    def _announce(self, client: NewClient) -> None:
        """Show the account as online: WhatsApp shows a contact "typing…" only from an account
        that is. (It also stops the phone's notifications while the session is connected.)"""
        try:
            REGISTRY.read(lambda: client.send_presence(Presence.AVAILABLE))
        except Exception as error:  # no push name yet, just after pairing: the next connect will
            logger.warning("could not announce the account as available",
                           extra={"instance_id": str(self.instance_id), "error": str(error)})

    def _on_receipt(self, client: NewClient, event: ReceiptEv) -> None:
        kind = RECEIPT_KINDS.get(event.Type)
        if kind is None or event.MessageSource.IsFromMe or not event.MessageIDs:
            return
        at = datetime.fromtimestamp(event.Timestamp, UTC) if event.Timestamp else datetime.now(UTC)
        try:
            self.on_receipt(self.instance_id, list(event.MessageIDs), kind, at)
        except Exception:  # never let a database error reach the Go callback
            logger.exception("could not record a receipt", extra={"instance_id": str(self.instance_id)})

    def _on_disconnected(self, client: NewClient, event: DisconnectedEv) -> None:
        if self.state not in TERMINAL:
            self._set("disconnected", "connection lost; reconnecting")

    def _on_logged_out(self, client: NewClient, event: LoggedOutEv) -> None:
        self.jid = None
        reason = _enum_name(event, "Reason", event.Reason)
        self._set("logged_out", f"logged out by WhatsApp ({reason}); pair again", jid=None)
        self._drop_connection()

    def _on_replaced(self, client: NewClient, event: StreamReplacedEv) -> None:
        """Terminal, unless this worker holds the lease (the loop asks): then it takes it back."""
        self._set("replaced", "the session was opened elsewhere; restart to take it back")
        self._drop_connection()

    def _on_ban(self, client: NewClient, event: TemporaryBanEv) -> None:
        self._banned_until = time.monotonic() + max(int(event.Expire), 1)
        code = _enum_name(event, "Code", event.Code)
        self._set("banned", f"temporarily banned by WhatsApp ({code}); reconnects by itself in {event.Expire}s")
        self._drop_connection()

    def _on_connect_failure(self, client: NewClient, event: ConnectFailureEv) -> None:
        reason = _enum_name(event, "Reason", event.Reason)
        if event.Reason in (ConnectFailureReason.Value("LOGGED_OUT"), ConnectFailureReason.Value("MAIN_DEVICE_GONE"),
                            ConnectFailureReason.Value("UNKNOWN_LOGOUT"), ConnectFailureReason.Value("TEMP_BANNED")):
            return  # whatsmeow follows with LoggedOut or TemporaryBan, which say it better
        if event.Reason == ConnectFailureReason.Value("CLIENT_OUTDATED"):
            self._on_outdated(client, event)
            return
        message = f": {event.Message}" if event.Message else ""
        if reason in PASSING_FAILURES:
            self._set("connect_failed", f"WhatsApp refused the connection ({reason}{message}); reconnecting")
        else:  # a refusal we cannot answer: back off far, and say why
            self._unknown_failures += 1
            wait = min(UNKNOWN_FAILURE_FIRST * 2 ** (self._unknown_failures - 1), UNKNOWN_FAILURE_CAP)
            self._retry_after = wait
            self._set("connect_failed", f"WhatsApp refused the connection ({reason}{message}), a refusal with no"
                                        f" known remedy ({self._unknown_failures} in a row): next attempt in {wait:g}s")
        self._drop_connection()

    def _on_outdated(self, client: NewClient, event: Any) -> None:
        self._set("outdated", "WhatsApp says this client version is outdated: upgrade neonize, then restart")
        self._drop_connection()

    def _on_stream_error(self, client: NewClient, event: StreamErrorEv) -> None:
        self._set("disconnected", f"WhatsApp stream error {event.Code or '(no code)'}; reconnecting")
        self._drop_connection()

    def _on_keepalive_timeout(self, client: NewClient, event: KeepAliveTimeoutEv) -> None:
        # No answer to pings: sends would hang until they time out (uncertain), so the heads wait.
        self._set("disconnected", f"WhatsApp stopped answering keepalives ({event.ErrorCount} in a row)")
        if event.ErrorCount >= KEEPALIVE_LIMIT:
            self._drop_connection()

    def _on_keepalive_restored(self, client: NewClient, event: KeepAliveRestoredEv) -> None:
        if self.state == "disconnected":
            self._set("connected")

    # -- the connect loop ---------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 1.0
        try:
            while not self._stopping.is_set() and not self.ended:
                if self.state == "banned" and self._banned_until > time.monotonic():
                    self._wake.wait(self._banned_until - time.monotonic())
                    self._wake.clear()
                    if self.state == "banned" and self._banned_until <= time.monotonic():
                        self.client = self._new_client()
                        self.state = "disconnected"  # the ban is over: connect again
                    continue
                if self.state == "replaced" and self.client is not None:
                    self._take_back()
                    continue
                if self.state in TERMINAL or self.client is None:
                    if self.client is None and self.state not in TERMINAL and self.pairing is None \
                            and self.state != "unpaired":
                        self._set("unpaired", UNPAIRED_DETAIL)
                    self._wake.wait()  # until a pairing, restart() or stop()
                    self._wake.clear()
                    continue
                holds = self._lease_holds()
                if holds is False:
                    break
                if holds:
                    self._connect_once()
                if self._stopping.is_set() or self.ended:
                    break
                if self._was_connected:
                    backoff, self._was_connected = 1.0, False
                wait, self._retry_after = self._retry_after or backoff, None
                self._wake.wait(wait)
                self._wake.clear()
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            if self.pairing is not None:
                self.pairing.kill()
            if not self.ended and self.state not in TERMINAL and self.state != "unpaired":
                self._set("disconnected", "session stopped")

    def _lease_holds(self) -> bool | None:
        """Whether this worker still holds the lease it started under (asked before every connect):
        False ends the session; None (the database cannot tell now) waits for the next turn."""
        try:
            holds = self.may_connect()
        except Exception as error:
            logger.warning("could not check the session's lease; connecting later",
                           extra={"instance_id": str(self.instance_id), "error": str(error)})
            return None
        if not holds:
            self.ended = True
            self._set("disconnected", LEASE_LOST_DETAIL)  # recorded only if this worker still may
            client, self.client = self.client, None
            if client is not None:
                threading.Thread(target=stop_client, args=(client,), daemon=True).start()
        return holds

    def _take_back(self) -> None:
        """`replaced`: another connection of this device took ours. Terminal unless this worker
        holds the instance's lease; then the connection is taken back after a growing wait."""
        holds = self._lease_holds()
        if not holds:
            if holds is None:
                self._wake.wait(self.max_backoff)
                self._wake.clear()
            return
        self._replacements += 1
        wait = min(REPLACED_FIRST * 2 ** (self._replacements - 1), REPLACED_CAP)
        self._set("replaced", f"the session was opened elsewhere; this worker holds its lease: taking it back"
                              f" in {wait:g}s ({self._replacements} in a row)")
        if self._wake.wait(wait):
            self._wake.clear()
            if self.state != "replaced":
                return  # a restart or stop meanwhile
        if self.state == "replaced" and not self._stopping.is_set():
            self.state = "disconnected"

    def _connect_once(self) -> None:
        client = self.client
        assert client is not None
        key = client.uuid.decode()
        self._set("connecting")
        # Exclusive until the dial reaches the gate (neonize's map writes are done by then); once
        # WhatsApp answers, shared until Go's first callback (its own reads are done): registry.py.
        connecting = REGISTRY.connecting()
        try:
            CONNECTS[key] = connecting
            url = GATE.open(key, functools.partial(self._on_dial, client, connecting),
                            functools.partial(self._on_redial, client, connecting), connecting.inbound,
                            tag=connecting)
            client.connect(ProxySettings(proxy_address=url, no_media=True))
            # connect() returns when the client was stopped: it is not connected now.
            if self.state in ("connected", "connecting", "restricted"):
                self._set("disconnected", "connection closed")
        except Exception as error:
            self._set("disconnected", str(map_error(error)))
        finally:
            connecting.returned()
            try:  # neonize never closes the store pool this connect opened
                self.store.release(key)
            except Exception:
                logger.exception("could not end a finished client's store connections")

    def _on_dial(self, client: NewClient, connecting: Connecting) -> None:
        """The connect's dial reached the gate: neonize has written its maps."""
        media = functools.partial(client.set_proxy_address, self.proxy, no_websocket=True) if self.proxy else None
        connecting.dialed(then=media)  # media through WHATSAPP_PROXY too; the websocket goes through the gate
        if self._stopping.is_set() or client is not self.client:
            raise GateRefused("the session was stopped or restarted")

    def _on_redial(self, client: NewClient, connecting: Connecting) -> None:
        """whatsmeow tried to reconnect by itself (refused): end this connect; the loop makes the
        next one, once it has checked the lease."""
        if client is self.client and not self._stopping.is_set():
            logger.info("whatsmeow reconnects by itself: reconnecting through the session",
                        extra={"instance_id": str(self.instance_id)})
            self._drop_connection(connecting)

    # -- pairing ----------------------------------------------------------------------------------

    def pair(self, phone: str | None = None, wait: float = 20.0) -> str | None:
        """Start a pairing attempt (or keep the QR one under way). With `phone`, wait for the
        8-character code to type on that phone (Linked devices → Link with phone number)."""
        with self._pair_lock:
            if self.jid is not None:
                raise PairingRefused(f"already paired with {self.jid} ({self.state}); disconnect to pair another")
            running = self.pairing is not None and self.pairing.running
            if running and phone is None and self._pair_phone is None:
                return None  # the QR attempt under way goes on
            if running:
                assert self.pairing is not None
                self.pairing.kill()
                self.pairing.wait(5)
            self._attempts += 1
            self._pair_phone, self._pair_code, self._pair_failure = phone, None, None
            self._pair_answered.clear()
            key = client_key(self.instance_id)
            self.pairing = PairingAttempt(
                store_url=self.store.url(key), key=key, phone=phone,
                proxy=self.proxy, deadline=self.pairing_deadline, command=self.pairing_command,
                report=functools.partial(self._on_pairing, self._attempts))
            self._set("pairing", "connecting to WhatsApp for a pairing code")
        if phone is None:
            return None
        if not self._pair_answered.wait(wait):
            raise PairingRefused("WhatsApp gave no phone code in time; try again")
        if self._pair_code is None:
            raise PairingRefused(self._pair_failure or "the pairing attempt ended without a code")
        return self._pair_code

    def _on_pairing(self, attempt: int, report: dict[str, Any]) -> None:
        if attempt != self._attempts or self._stopping.is_set():
            return  # a replaced attempt: its last words change nothing
        if "qr" in report:
            self._set("qr", "scan the QR code with WhatsApp (Linked devices)", qr=report["qr"])
        elif "code" in report:
            self._pair_code = report["code"]
            self._pair_answered.set()
            self._set("pairing", f"type the code {report['code']} on the phone"
                                 " (Linked devices → Link with phone number)")
        elif "paired" in report:
            self.jid = report["paired"]
            self._set("paired", None, jid=self.jid)
        elif "failed" in report:
            self._pair_failure = self._pair_failure or report["failed"]
            self._pair_answered.set()
        elif "exit" in report:
            self.pairing = None
            self._pair_answered.set()
            if self.jid is not None:  # linked: connect with it here
                self.client = self._new_client()
                self.state = "disconnected"
                self._wake.set()
                return
            if report["expired"]:
                reason = "the pairing code expired unused; request a new one"
            else:
                reason = self._pair_failure or f"the pairing attempt ended (exit {report['exit']}): " \
                                               f"{report['stderr'].strip()[-300:] or 'no output'}"
            self._set("unpaired", f"{reason}; {UNPAIRED_DETAIL}", qr=None)

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
        if self.pairing is not None:
            self.pairing.kill()
        if self.client is not None:
            stopper = threading.Thread(target=stop_client, args=(self.client,), daemon=True)
            stopper.start()
            stopper.join(timeout)
        if self.thread.is_alive():
            self.thread.join(timeout)

    def restrict(self, reason: str) -> float | None:
        """WhatsApp refused a send with its reach-out time-lock (463): the connection is fine, but
        the account may not start conversations for now. The instance shows it (`restricted`, with
        the reason and the next try: status route, dashboard, DisconnectedCallback) and sends wait
        (the head is snoozed, no attempt spent) until the wait is over, then the head is tried
        again (ConnectedCallback). The queue is strictly ordered, so a head to a new contact holds
        the instance's later messages to anyone: they cannot overtake it. Returns the wait (None
        if the session is not connected: nothing to restrict)."""
        if self.state != "connected":
            return None
        self.restrictions += 1
        wait = min(RESTRICTED_FIRST * 2 ** (self.restrictions - 1), RESTRICTED_CAP)
        at = datetime.now(UTC) + timedelta(seconds=wait)
        self._set("restricted", f"{reason}; sends wait until {at:%H:%M} UTC, then the first one is tried again"
                                f" ({self.restrictions} in a row; restart to try now)")
        if self._lift is not None:
            self._lift.cancel()
        self._lift = threading.Timer(wait, self._lift_restriction, args=(self.client,))
        self._lift.daemon = True
        self._lift.start()
        return wait

    def _lift_restriction(self, client: NewClient | None) -> None:
        if self.state == "restricted" and client is self.client and not self._stopping.is_set():
            self._set("connected")  # the waiting head goes at once

    def lift_restriction(self) -> None:
        """Try the head now (the API's resume): a restriction ends before its wait is over."""
        if self._lift is not None:
            self._lift.cancel()
        self._lift_restriction(self.client)

    def delivered(self) -> None:
        """A send went through: a later time-lock starts its wait from the first step again."""
        self.restrictions = 0

    def restart(self) -> None:
        """Drop the connection and connect again; an unpaired instance forgets its pairing attempt."""
        if self.pairing is not None:
            self._attempts += 1  # its exit report is ignored
            self.pairing.kill()
            self.pairing = None
        old = self.client
        self._banned_until = 0.0
        self._unknown_failures = self._replacements = self.restrictions = 0
        self._retry_after = None
        if self._lift is not None:
            self._lift.cancel()
        self.client = self._new_client()
        if old is not None:
            threading.Thread(target=stop_client, args=(old,), daemon=True).start()
        self.state = "disconnected"
        self._wake.set()

    def logout(self) -> None:
        """Unlink this device from the phone; the instance must be paired again."""
        client, self.client = self.client, None
        if client is not None:
            REGISTRY.read(client.logout)
        self.jid = None
        self._set("logged_out", "logged out on request; pair again", jid=None)
        if client is not None:
            threading.Thread(target=stop_client, args=(client,), daemon=True).start()
        self._wake.set()
