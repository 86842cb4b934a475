"""Turn neonize's errors into the transport's typed errors.

neonize raises one exception class per call (`SendMessageError`, `SendPresenceError`,
`UploadError`, …) carrying whatsmeow's error text; what matters is the text. The patterns are
whatsmeow's own strings (errors.go, send.go, request.go, socket/constants.go), each kept with the
reason for its kind; tests/test_whatsapp_edge.py feeds every one of them. The table is ordered:
the first matching pattern wins.

What counts is whether the message frame may have left: before it did, a failure is retried (or
waits for the connection) with no risk of a duplicate; once it may have, the message is
*uncertain* and `MESSAGE_QUEUE_RESEND_UNCERTAIN` decides, never a silent retry. The one
exception is the server's refusal of the message node (`server returned error <code>`, its
nack): the frame left but nothing was delivered, so `REFUSALS` answers by its code.
"""

from __future__ import annotations

import re

from workers.transports.base import (
    InstanceDisconnected,
    PermanentSendError,
    RetryableSendError,
    TransportError,
    UncertainSendError,
)

ERROR_TABLE: tuple[tuple[re.Pattern[str], type[TransportError]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        # The frame went out and no answer came back (DisconnectedError "message send" and its
        # "(retry)", ErrMessageTimedOut), or the retry after a disconnect found no socket: a bare
        # ErrNotConnected / ErrSocketClosed comes only from retryFrame, after the first send.
        (r"websocket disconnected before message send"
         r"|timed out waiting for message send response"
         r"|^(websocket not connected|frame socket is closed)$", UncertainSendError),
        # Nothing left: no socket when the node was to be written, not logged in, no dial, or a
        # lookup before the send (user info, device list) cut off by a disconnect.
        (r"failed to send message node: (websocket not connected|frame socket is closed)"
         r"|^websocket not connected$|client is nil|doesn't contain a device jid"
         r"|failed to dial whatsapp web websocket|websocket disconnected before info query"
         r"|connection (refused|closed)", InstanceDisconnected),
        # The message can never go as it is: a number not on WhatsApp (send.go: "no LID found
        # for … from server"), an address WhatsApp does not route, the server's own refusal.
        (r"no LID found for .* from server|can't send message to unknown server"
         r"|message recipient must be a user JID with no device part"
         r"|sending to non-status broadcast lists is not yet supported"
         r"|info query returned status 40[0346]\b"
         r"|the given data is not a valid image|unknown media type|frame too large", PermanentSendError),
        # Refused or failed before or at the server, nothing delivered: try again later.
        (r"info query timed out|info query returned status (429|5\d\d)|rate-overlimit"
         r"|no signal session established|failed to get (device list|LID)"
         r"|failed to fetch LID mappings|failed to prefetch sessions", RetryableSendError),
    )
)


class ReachOutTimeLock(InstanceDisconnected):
    """The server's 463: the account may not start conversations for now. Nothing was delivered;
    the session shows the lock and holds its sends for a while (sessions.py `Session.restrict`)."""

    REASON = "WhatsApp's reach-out time-lock (463): this account may not start new conversations for now"


# The server's nack of the message node (whatsmeow's ErrServerReturnedError, "server returned error
# <code>"). A 4xx: it refused the message, so nothing was delivered and another try cannot duplicate
# it; a 5xx: it failed while it held the message, which may have gone on (uncertain when answered to
# the frame). A row per code, else per class ("4xx", "5xx"): the kind and the reason, in our words,
# that the message's error starts with. Sources in docs/decisions.md (issue 21); each row is tested.
REFUSAL = re.compile(r"server returned error (\d{3})\b", re.IGNORECASE)
REACH_OUT_TIME_LOCK = f"{ReachOutTimeLock.REASON}; waiting"
REFUSALS: dict[int | str, tuple[type[TransportError], str]] = {
    # Refused for this recipient, reported to pass an hour or more later (or the account blocked
    # the recipient): retried with backoff, discarded after MESSAGE_QUEUE_MAX_JOB_ATTEMPTS.
    403: (RetryableSendError, "WhatsApp refused the message (403); it may pass later"),
    # The account may not start conversations for a while: the head waits without spending an
    # attempt (snoozed by MESSAGE_QUEUE_DISCONNECT_RETRY_DELAY, as for a disconnected instance).
    463: (ReachOutTimeLock, REACH_OUT_TIME_LOCK),
    # Intermittent (seen right after an undecryptable message from the recipient); passes on a
    # later try or after a reconnect.
    479: (RetryableSendError, "WhatsApp refused the message (479), an intermittent refusal"),
    # Any other refusal: nothing was delivered, so a few tries before the discard cost nothing.
    "4xx": (RetryableSendError, "WhatsApp refused the message"),
    # The server failed while it held the message: whether it went on cannot be told, so answered
    # to the frame it is uncertain (MESSAGE_QUEUE_RESEND_UNCERTAIN decides); elsewhere retryable.
    "5xx": (UncertainSendError, "WhatsApp's server failed while taking the message"),
}


def refusal(message: str) -> tuple[type[TransportError], str] | None:
    """The row of `REFUSALS` for a server refusal in `message`, or None if it is not one."""
    found = REFUSAL.search(message)
    if not found:
        return None
    code = int(found.group(1))
    return REFUSALS.get(code) or REFUSALS.get(f"{code // 100}xx")


def map_error(error: BaseException, *, sending: bool = False) -> TransportError:
    """The typed error for a neonize exception. `sending`: the error came from the call that
    writes the message frame, so an error we do not know may mean it went out (uncertain);
    elsewhere an unknown error is retryable."""
    if isinstance(error, TransportError):
        return error
    text = f"{type(error).__name__}: {error}"
    message = str(error).strip()
    refused = refusal(message)
    if refused:
        kind, reason = refused
        if kind is UncertainSendError and not sending:
            kind = RetryableSendError  # no message frame of ours was in flight
        return kind(f"{reason} ({text})")
    for pattern, kind in ERROR_TABLE:
        if pattern.search(message):
            if kind is UncertainSendError and not sending:
                continue  # no message frame of ours was in flight (a presence, an upload)
            return kind(text)
    return UncertainSendError(text) if sending else RetryableSendError(text)
