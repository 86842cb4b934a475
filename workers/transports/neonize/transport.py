"""The neonize transport: the `Transport` interface over the sessions this worker holds.

Every WhatsApp call is bounded by `MESSAGE_QUEUE_JOB_TIMEOUT` (a helper thread runs it), so a
hung call can never hold a message thread past the heartbeat TTL (I5). A send that does not
answer in time may still reach WhatsApp: it is reported as uncertain, with the call itself
(`UncertainSendError.late`), so that a late answer completes the message instead of a resend.

A call that goes on after its timeout keeps its instance waiting until it returns, until its
bound (`CALL_BOUND`) has passed, or until the session's client it runs on was replaced (a
restart) and stopped (`RESTART_GRACE`): neonize exposes no deadline of its own for uploads or
sends (see `CALL_BOUND`).

The claim is checked (`OutgoingMessage.before_write`) right before each frame leaves, after
the media was fetched and uploaded: a worker that stood still past its claim sends nothing.

A one-to-one send (or its "typing…") from a process whose neonize would tag it as sent by a bot
waits instead (bottag.py: the worker was started without NEONIZE_BOT_TAG=off).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as CallTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

from neonize.client import NewClient
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message
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
from workers.transports.neonize import bottag, media
from workers.transports.neonize.errors import ReachOutTimeLock, map_error
from workers.transports.neonize.manager import SessionManager
from workers.transports.neonize.messages import build_message, quotable, retarget
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

#: Seconds from a call's start after which it is no longer waited for. neonize 0.5.2 passes
#: `context.Background()` to every call and takes no timeout (goneonize/main.go `Upload`,
#: `SendMessage`), so only whatsmeow's own waits bound a call (request.go, send.go at
#: e277b766ab33, the version neonize 0.5.2 pins): an info query before the frame (device list,
#: LID, prekeys; usually cached) waits at most 75 s (`defaultRequestTimeout`), the answer to the
#: message frame 75 s (`SendRequestExtra.Timeout` defaults to it), and after a disconnect the
#: re-send waits 5 s for a reconnect (`retryFrame`): 155 s, rounded up. Two waits are unbounded
#: even there: the answer to a re-sent frame (`retryFrame(…, 0)`, until the next disconnect) and
#: a media upload's HTTP request (`mediaHTTP` has no timeout). Past the bound the instance is no
#: longer held for the call; the call, if it ever returns, is logged.
CALL_BOUND = 160.0
#: Messages this worker sent, remembered for the replies and reactions that name them (their
#: author is us, and a reply quotes their content): a few KB each at most (quotable()).
SENT_REMEMBERED = 4096


#: Seconds an abandoned call is still waited for once its session replaced the client it runs on
#: (a restart, a logout: the session stops the old client at once). A stopped whatsmeow client
#: ends every wait within 5 s: the waits for an answer get its disconnect at once, and the re-send
#: gives up when no reconnect comes within 5 s (`retryFrame`); nothing can leave it after that.
#: 10 s leaves the stop itself time to run.
RESTART_GRACE = 10.0


@dataclass
class Abandoned:
    """A call that did not answer in time and goes on in its thread."""

    future: Future[Any]
    #: The session's client the call runs on (see RESTART_GRACE).
    client: Any
    #: time.monotonic() after which the call can no longer return (CALL_BOUND from its start,
    #: RESTART_GRACE from when its client was seen replaced).
    until: float
    replaced: bool = False


def to_jid_text(phone: str) -> str:
    """Our stored phone → a WhatsApp address: digits, a full JID, or Z-API's `…-group`."""
    if "@" in phone:
        return phone
    if phone.endswith("-group"):
        return f"{phone.removesuffix('-group')}@g.us"
    return f"{phone}@s.whatsapp.net"


def own_jid(session: Any) -> str:
    """The account's own address without its device part (`user@s.whatsapp.net`), or ""."""
    jid = getattr(session, "jid", None) or ""
    user, _, server = jid.partition("@")
    return f"{user.split(':')[0]}@{server}" if user and server else ""


def check_bot_tag(client: Any, to: str) -> None:
    """Raise InstanceDisconnected (nothing sent, the message waits) for a one-to-one chat when
    this process's neonize would add `<bot biz_bot="1"/>` to what `client` sends there. Only
    neonize's client sends through goneonize's `SendMessage`, which adds it (bottag.py)."""
    if isinstance(client, NewClient) and to.rpartition("@")[2] == bottag.USER_SERVER:
        reason = bottag.refusal()
        if reason:
            raise InstanceDisconnected(reason)


def checked(message: OutgoingMessage) -> None:
    """`before_write`: ClaimLost passes untouched; any other failure to check means nothing was
    sent, so it is retryable (never uncertain)."""
    try:
        message.before_write()
    except TransportError:
        raise
    except Exception as error:
        raise RetryableSendError(f"the claim could not be checked before sending: "
                                 f"{type(error).__name__}: {error}") from None


class NeonizeTransport:
    def __init__(self, manager: SessionManager, *, timeout: float, threads: int,
                 call_bound: float = CALL_BOUND, restart_grace: float = RESTART_GRACE) -> None:
        self.manager = manager
        self.timeout = timeout
        self.call_bound = max(call_bound, timeout)
        self.restart_grace = restart_grace
        # A send waits for its media budget well within the job timeout, or its build would be
        # abandoned while it merely waits (and then fetch and upload for nothing).
        media.BUDGET.wait = min(media.BUDGET.wait, timeout / 3)
        self.calls = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="whatsapp-call")
        #: Calls that did not answer in time and go on in their thread, by instance: until such a
        #: call is over, the instance sends nothing more, or a later message could overtake it, or
        #: a retry repeat it, if it lands after all (issue 11).
        self.abandoned: dict[UUID, Abandoned] = {}
        #: (instance, phone) → the WhatsApp address that phone is registered under, when it is
        #: another form of the number (numbers.py).
        self.resolved: dict[tuple[UUID, str], str] = {}
        #: (instance, WhatsApp id) → what was sent, for replies and reactions that name it.
        self.sent: OrderedDict[tuple[UUID, str], Message] = OrderedDict()
        self._lock = threading.Lock()

    def _session(self, instance_id: UUID) -> Session:
        session = self.manager.get(instance_id)
        self._check_abandoned(instance_id, session)
        if session is None:
            reason = "this worker does not hold the session" if not self.manager.owner else "no session yet"
            raise InstanceDisconnected(reason)
        if not session.connected or session.client is None:
            raise InstanceDisconnected(f"{session.state}: {session.detail or 'not connected'}")
        return session

    def _check_abandoned(self, instance_id: UUID, session: Session | None) -> None:
        """Raise InstanceDisconnected while an abandoned call of the instance may still act: until
        it returned, its bound passed, or its client, replaced by the session, was stopped."""
        now = time.monotonic()
        with self._lock:
            pending = self.abandoned.get(instance_id)
            if pending is None:
                return
            if not pending.replaced and session is not None and session.client is not pending.client:
                pending.replaced = True
                pending.until = min(pending.until, now + self.restart_grace)
            if pending.future.done():
                why = None
            elif now >= pending.until:
                why = "its session's client was replaced and stopped" if pending.replaced else "its bound passed"
            else:
                raise InstanceDisconnected("an earlier WhatsApp call of this instance has not returned yet")
            del self.abandoned[instance_id]
        if why:
            logger.warning("no longer waiting for an abandoned WhatsApp call: %s", why,
                           extra={"instance_id": str(instance_id)})

    def _bounded(self, instance_id: UUID, client: Any, call: Callable[[], T], on_timeout: type[TransportError],
                 *, sending: bool = False) -> T:
        """Run a WhatsApp call within the job timeout. `sending`: the call writes the message
        frame, so a timeout or an unknown error may mean it went out (errors.py); its timeout
        carries the call, which may still answer with the message's id."""
        started: list[float] = []

        def run() -> T:
            started.append(time.monotonic())
            return call()

        future = self.calls.submit(run)
        try:
            return future.result(timeout=self.timeout)
        except CallTimeout:
            if future.cancel():  # it never started (hung calls hold every helper): nothing was sent, it waits
                raise InstanceDisconnected(f"no free connection to WhatsApp within {self.timeout:g}s"
                                           " (earlier calls are hung)") from None
            now = time.monotonic()
            until = (started[0] if started else now) + self.call_bound
            with self._lock:
                current = self.abandoned.get(instance_id)
                # A message's frame outranks a presence or an upload: the instance waits for it.
                if sending or current is None or current.future.done():
                    self.abandoned[instance_id] = Abandoned(future, client, until)
            future.add_done_callback(lambda f: self._returned_late(instance_id, f))
            reason = f"WhatsApp did not answer within {self.timeout:g}s"
            if on_timeout is UncertainSendError:
                raise UncertainSendError(reason, late=future, late_within=max(0.0, until - now)) from None
            raise on_timeout(reason) from None
        except TransportError:
            raise
        except Exception as error:
            raise map_error(error, sending=sending) from None

    def _returned_late(self, instance_id: UUID, future: Future[Any]) -> None:
        with self._lock:
            pending = self.abandoned.get(instance_id)
            if pending is not None and pending.future is future:
                del self.abandoned[instance_id]
        error = future.exception()
        logger.info("an abandoned WhatsApp call returned", extra={
            "instance_id": str(instance_id), "error": f"{type(error).__name__}: {error}" if error else None})

    def is_connected(self, instance_id: UUID) -> bool:
        session = self.manager.get(instance_id)
        return bool(session and session.connected)

    def send_presence(self, instance_id: UUID, phone: str, presence: Presence) -> None:
        session = self._session(instance_id)
        state, media = PRESENCES[presence]
        client = session.client
        check_bot_tag(client, to_jid_text(phone))  # no "typing…" for a message that will wait
        jid = parse_jid(to_jid_text(phone))
        self._bounded(instance_id, client,
                      lambda: REGISTRY.read(lambda: client.send_chat_presence(jid, state, media)),
                      RetryableSendError)

    def send(self, message: OutgoingMessage) -> str:
        session = self._session(message.instance_id)
        try:
            whatsapp_id = self._send_message(session, message)
        except ReachOutTimeLock as error:
            wait = session.restrict(ReachOutTimeLock.REASON)
            if wait is None:
                raise
            raise InstanceDisconnected(f"{session.state}: {session.detail}") from error
        session.delivered()
        return whatsapp_id

    def _send_message(self, session: Session, message: OutgoingMessage) -> str:
        client = session.client
        to = self.resolved.get((message.instance_id, message.phone)) or to_jid_text(message.phone)
        check_bot_tag(client, to)

        def upload(data: bytes, kind: Any) -> Any:
            return REGISTRY.read(lambda: client.upload(data, kind))

        def sent_before(whatsapp_id: str) -> Message | None:
            with self._lock:
                return self.sent.get((message.instance_id, whatsapp_id))

        # Fetching and uploading media sends nothing yet: a timeout there is plainly retryable.
        built = self._bounded(message.instance_id, client,
                              lambda: build_message(message.message_type, message.payload, upload=upload, to=to,
                                                    own=own_jid(session), sent=sent_before),
                              RetryableSendError)
        try:
            return self._send(message, client, to, built)
        except PermanentSendError as error:
            # "no LID found" comes before anything is sent: the number may be registered in
            # another form (Brazil's ninth digit), which WhatsApp can tell.
            other = self._other_form(message, client) if "no LID found" in str(error) else None
            if other is None:
                raise
            logger.info("sending to the number's registered form", extra={
                "zaap_id": message.zaap_id, "instance_id": str(message.instance_id), "jid": other})
            self.resolved[(message.instance_id, message.phone)] = other
            # A reaction or a reply names its chat: name the new one (nothing is uploaded again).
            return self._send(message, client, other, retarget(built, to, other))

    def _send(self, message: OutgoingMessage, client: Any, to: str, built: Message) -> str:
        """One frame: the claim checked right before it leaves, the id remembered once sent."""
        jid = parse_jid(to)

        def call() -> str:
            checked(message)
            whatsapp_id = str(REGISTRY.read(lambda: client.send_message(jid, built)).ID)
            self._remember(message.instance_id, whatsapp_id, built)
            return whatsapp_id

        return self._bounded(message.instance_id, client, call, UncertainSendError, sending=True)

    def _remember(self, instance_id: UUID, whatsapp_id: str, built: Message) -> None:
        with self._lock:
            self.sent[(instance_id, whatsapp_id)] = quotable(built)
            while len(self.sent) > SENT_REMEMBERED:
                self.sent.popitem(last=False)

    def _other_form(self, message: OutgoingMessage, client: Any) -> str | None:
        """The registered form of the message's number, if WhatsApp knows one."""
        variants = brazil_variants(message.phone)
        if not variants:
            return None
        answers = self._bounded(message.instance_id, client,
                                lambda: REGISTRY.read(lambda: client.is_on_whatsapp(*(f"+{v}" for v in variants))),
                                RetryableSendError)
        registered = [a for a in answers if a.IsIn and a.JID.User]
        return f"{registered[0].JID.User}@{registered[0].JID.Server or 's.whatsapp.net'}" if registered else None

    def close(self) -> None:
        self.calls.shutdown(wait=False, cancel_futures=True)
