"""Turn neonize's errors into the transport's typed errors.

neonize raises one exception class per call (`SendMessageError`, `SendPresenceError`,
`UploadError`, …) carrying whatsmeow's message; what matters is the message. The table is
ordered: the first matching pattern wins.
"""

from __future__ import annotations

import re

from workers.transports.base import (
    InstanceDisconnected,
    PermanentSendError,
    RetryableSendError,
    TransportError,
)

ERROR_TABLE: tuple[tuple[re.Pattern[str], type[TransportError]], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        # No usable connection: nothing was sent; the head waits for the instance.
        (r"websocket not connected|not connected|client is nil|doesn't contain a device jid"
         r"|not logged in|failed to dial|connection (refused|closed)", InstanceDisconnected),
        # The message can never go as it is.
        (r"invalid jid|not on whatsapp|not a whatsapp user|unsupported|invalid (media|mime)"
         r"|server returned error 40[0346]|item-not-found|forbidden|too large", PermanentSendError),
        # May pass: try again later.
        (r"timed? ?out|deadline exceeded|temporar|reset by peer|server returned error 5\d\d"
         r"|rate.?limit|try again", RetryableSendError),
    )
)


def map_error(error: BaseException) -> TransportError:
    """The typed error for a neonize exception (unknown ones count as retryable)."""
    if isinstance(error, TransportError):
        return error
    text = f"{type(error).__name__}: {error}"
    for pattern, kind in ERROR_TABLE:
        if pattern.search(str(error)):
            return kind(text)
    return RetryableSendError(text)
