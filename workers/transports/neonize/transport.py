"""The neonize transport: the `Transport` interface over the sessions this worker holds.

Every WhatsApp call is bounded by `MESSAGE_QUEUE_JOB_TIMEOUT` (a helper thread runs it), so a
hung call can never hold a message thread past the heartbeat TTL (I5). A send that does not
answer in time may still reach WhatsApp: it is reported as uncertain.

A one-to-one send (or its "typing…") from a process whose neonize would tag it as sent by a bot
waits instead (bottag.py: the worker was started without NEONIZE_BOT_TAG=off).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as CallTimeout
from typing import Any, TypeVar
from uuid import UUID

from neonize.client import NewClient
from neonize.utils.enum import ChatPresence, ChatPresenceMedia

from workers.transports.base import (
    InstanceDisconnected,
    OutgoingMessage,
    PermanentSendError,
    Presence,
    RetryableSendError,
    TransportError,
    UncertainSendError,
)
from workers.transports.neonize import bottag
from workers.transports.neonize.errors import map_error
from workers.transports.neonize.manager import SessionManager
from workers.transports.neonize.messages import build_message
from workers.transports.neonize.numbers import brazil_variants
from workers.transports.neonize.registry import REGISTRY
from workers.transports.neonize.sessions import Session, parse_jid

T = TypeVar("T")
logger = logging.getLogger("wmq.whatsapp")

PRESENCES = {
    "composing": (ChatPresence.CHAT_PRESENCE_COMPOSING, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT),
    "recording": (ChatPresence.CHAT_PRESENCE_COMPOSING, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO),
    "paused": (ChatPresence.CHAT_PRESENCE_PAUSED, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT),
}


def to_jid_text(phone: str) -> str:
    """Our stored phone → a WhatsApp address: digits, a full JID, or Z-API's `…-group`."""
    if "@" in phone:
        return phone
    if phone.endswith("-group"):
        return f"{phone.removesuffix('-group')}@g.us"
    return f"{phone}@s.whatsapp.net"


def check_bot_tag(client: Any, to: str) -> None:
    """Raise InstanceDisconnected (nothing sent, the message waits) for a one-to-one chat when
    this process's neonize would add `<bot biz_bot="1"/>` to what `client` sends there. Only
    neonize's client sends through goneonize's `SendMessage`, which adds it (bottag.py)."""
    if isinstance(client, NewClient) and to.rpartition("@")[2] == bottag.USER_SERVER:
        reason = bottag.refusal()
        if reason:
            raise InstanceDisconnected(reason)


class NeonizeTransport:
    def __init__(self, manager: SessionManager, *, timeout: float, threads: int) -> None:
        self.manager = manager
        self.timeout = timeout
        self.calls = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="whatsapp-call")
        #: Calls that did not answer in time and go on in their thread, by instance: until such a
        #: call returns, the instance sends nothing more, or a later message could overtake it, or
        #: a retry repeat it, if it lands after all (issue 11).
        self.abandoned: dict[UUID, Future[Any]] = {}
        #: (instance, phone) → the WhatsApp address that phone is registered under, when it is
        #: another form of the number (numbers.py).
        self.resolved: dict[tuple[UUID, str], str] = {}
        self._lock = threading.Lock()

    def _session(self, instance_id: UUID) -> Session:
        with self._lock:
            pending = self.abandoned.get(instance_id)
            if pending is not None and pending.done():
                del self.abandoned[instance_id]
            elif pending is not None:
                raise InstanceDisconnected("an earlier WhatsApp call of this instance has not returned yet")
        session = self.manager.get(instance_id)
        if session is None:
            reason = "this worker does not hold the session" if not self.manager.owner else "no session yet"
            raise InstanceDisconnected(reason)
        if not session.connected or session.client is None:
            raise InstanceDisconnected(f"{session.state}: {session.detail or 'not connected'}")
        return session

    def _bounded(self, instance_id: UUID, call: Callable[[], T], on_timeout: type[TransportError], *,
                 sending: bool = False) -> T:
        """Run a WhatsApp call within the job timeout. `sending`: the call writes the message
        frame, so a timeout or an unknown error may mean it went out (errors.py)."""
        future = self.calls.submit(call)
        try:
            return future.result(timeout=self.timeout)
        except CallTimeout:
            if future.cancel():  # it never started (hung calls hold every helper): nothing was sent
                raise RetryableSendError(f"no free connection to WhatsApp within {self.timeout:g}s") from None
            with self._lock:
                self.abandoned[instance_id] = future
            raise on_timeout(f"WhatsApp did not answer within {self.timeout:g}s") from None
        except TransportError:
            raise
        except Exception as error:
            raise map_error(error, sending=sending) from None

    def is_connected(self, instance_id: UUID) -> bool:
        session = self.manager.get(instance_id)
        return bool(session and session.connected)

    def send_presence(self, instance_id: UUID, phone: str, presence: Presence) -> None:
        session = self._session(instance_id)
        state, media = PRESENCES[presence]
        client = session.client
        check_bot_tag(client, to_jid_text(phone))  # no "typing…" for a message that will wait
        jid = parse_jid(to_jid_text(phone))
        self._bounded(instance_id, lambda: REGISTRY.read(lambda: client.send_chat_presence(jid, state, media)),
                      RetryableSendError)

    def send(self, message: OutgoingMessage) -> str:
        client = self._session(message.instance_id).client
        to = self.resolved.get((message.instance_id, message.phone)) or to_jid_text(message.phone)
        check_bot_tag(client, to)

        def upload(data: bytes, kind: Any) -> Any:
            return REGISTRY.read(lambda: client.upload(data, kind))

        # Fetching and uploading media sends nothing yet: a timeout there is plainly retryable.
        built = self._bounded(message.instance_id, lambda: build_message(message.message_type, message.payload,
                                                                         upload=upload, to=to),
                              RetryableSendError)
        try:
            return self._send(message.instance_id, client, to, built)
        except PermanentSendError as error:
            # "no LID found" comes before anything is sent: the number may be registered in
            # another form (Brazil's ninth digit), which WhatsApp can tell.
            other = self._other_form(message, client) if "no LID found" in str(error) else None
            if other is None:
                raise
            logger.info("sending to the number's registered form", extra={
                "zaap_id": message.zaap_id, "instance_id": str(message.instance_id), "jid": other})
            self.resolved[(message.instance_id, message.phone)] = other
            if message.payload.get("messageId"):  # a reaction or a reply names its chat: name the new one
                built = build_message(message.message_type, message.payload, upload=upload, to=other)
            return self._send(message.instance_id, client, other, built)

    def _send(self, instance_id: UUID, client: Any, to: str, built: Any) -> str:
        jid = parse_jid(to)
        return self._bounded(instance_id, lambda: str(REGISTRY.read(lambda: client.send_message(jid, built)).ID),
                             UncertainSendError, sending=True)

    def _other_form(self, message: OutgoingMessage, client: Any) -> str | None:
        """The registered form of the message's number, if WhatsApp knows one."""
        variants = brazil_variants(message.phone)
        if not variants:
            return None
        answers = self._bounded(message.instance_id,
                                lambda: REGISTRY.read(lambda: client.is_on_whatsapp(*(f"+{v}" for v in variants))),
                                RetryableSendError)
        registered = [a for a in answers if a.IsIn and a.JID.User]
        return f"{registered[0].JID.User}@{registered[0].JID.Server or 's.whatsapp.net'}" if registered else None

    def close(self) -> None:
        self.calls.shutdown(wait=False, cancel_futures=True)
