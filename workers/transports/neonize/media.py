"""Fetch the media a message refers to: an http(s) URL, a `data:` URI, or bare base64.

Kept apart from neonize so it can be tested and reused without the Go library.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from functools import lru_cache

from service.outbound import Client, OutboundError
from workers.transports.base import PermanentSendError, RetryableSendError

#: Larger media is refused (WhatsApp's own limits are lower for most types).
MAX_MEDIA_BYTES = 100 * 1024 * 1024
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+\-]+/[\w.+\-]+)?(?:;[^,]*)?;base64,(?P<data>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Media:
    data: bytes
    mimetype: str | None


def fetch_media(reference: str, *, timeout: float = 20.0) -> Media:
    """The bytes behind `reference`. Bad references, 4xx answers, unreachable hosts, timeouts and
    files over the cap are permanent errors (the message fails with the reason, the queue moves
    on); 5xx answers and connections broken midway are retryable."""
    if reference.startswith(("http://", "https://")):
        return _download(reference, timeout)
    match = _DATA_URI.match(reference)
    if match:
        return Media(_b64(match.group("data")), match.group("mime"))
    return Media(_b64(reference), None)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise PermanentSendError("media is neither an http(s) URL nor base64 data") from None


def _download(url: str, timeout: float) -> Media:
    """Through the one guarded client (service/outbound.py): public addresses only, each redirect
    hop checked, one deadline for the whole download, the cap counted on decoded bytes."""
    try:
        answer = _client().get(url, timeout=timeout, max_bytes=MAX_MEDIA_BYTES)
    except OutboundError as failure:
        # Refused, unreachable, too slow or too large: the message says so in our words and the
        # instance's queue moves on (a retry would hold it again for as long); a connection
        # broken midway may do better next time.
        error = f"media could not be fetched: {failure.reason}"
        if failure.reason in ("the connection broke", "the answer was not valid HTTP"):
            raise RetryableSendError(error) from None
        raise PermanentSendError(error) from None
    if 400 <= answer.status < 500:
        raise PermanentSendError(f"media download refused: HTTP {answer.status}")
    if answer.status >= 500:
        raise RetryableSendError(f"media download failed: HTTP {answer.status}")
    if answer.status >= 300:
        raise PermanentSendError(f"media download answered HTTP {answer.status} without a usable redirect")
    return Media(answer.body, answer.mimetype)


@lru_cache(maxsize=1)
def _client() -> Client:
    return Client()
