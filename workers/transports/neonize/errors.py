"""Turn neonize's errors into the transport's typed errors.

neonize raises one exception class per call (`SendMessageError`, `SendPresenceError`,
`UploadError`, …) carrying whatsmeow's error text; what matters is the text. The patterns are
whatsmeow's own strings (errors.go, send.go, request.go, socket/constants.go), each kept with the
reason for its kind; tests/test_whatsapp_edge.py feeds every one of them. The table is ordered:
the first matching pattern wins.

What counts is whether the message frame may have left: before it did, a failure is retried (or
waits for the connection) with no risk of a duplicate; once it may have, the message is
*uncertain* and `MESSAGE_QUEUE_RESEND_UNCERTAIN` decides, never a silent retry.
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
         r"|info query returned status 40[0346]\b|server returned error 4\d\d"
         r"|the given data is not a valid image|unknown media type|frame too large", PermanentSendError),
        # Refused or failed before or at the server, nothing delivered: try again later.
        (r"info query timed out|info query returned status (429|5\d\d)|rate-overlimit"
         r"|server returned error 5\d\d|no signal session established|failed to get (device list|LID)"
         r"|failed to fetch LID mappings|failed to prefetch sessions", RetryableSendError),
    )
)


def map_error(error: BaseException, *, sending: bool = False) -> TransportError:
    """The typed error for a neonize exception. `sending`: the error came from the call that
    writes the message frame, so an error we do not know may mean it went out (uncertain);
    elsewhere an unknown error is retryable."""
    if isinstance(error, TransportError):
        return error
    text = f"{type(error).__name__}: {error}"
    message = str(error).strip()
    for pattern, kind in ERROR_TABLE:
        if pattern.search(message):
            if kind is UncertainSendError and not sending:
                continue  # no message frame of ours was in flight (a presence, an upload)
            return kind(text)
    return UncertainSendError(text) if sending else RetryableSendError(text)
