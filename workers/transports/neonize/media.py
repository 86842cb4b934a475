"""Fetch the media a message refers to: an http(s) URL, a `data:` URI, or bare base64.

Kept apart from neonize so it can be tested and reused without the Go library.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import httpx

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
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if 400 <= response.status_code < 500:
                raise PermanentSendError(f"media download refused: HTTP {response.status_code} for {url}")
            if response.status_code >= 500:
                raise RetryableSendError(f"media download failed: HTTP {response.status_code} for {url}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_MEDIA_BYTES:
                    raise PermanentSendError(f"media larger than {MAX_MEDIA_BYTES} bytes: {url}")
                chunks.append(chunk)
            mimetype = response.headers.get("content-type", "").split(";")[0].strip() or None
            return Media(b"".join(chunks), mimetype)
    except (httpx.ConnectError, httpx.TimeoutException, httpx.UnsupportedProtocol, httpx.TooManyRedirects) as error:
        # Unreachable, or too slow to come within one attempt: the message says so and the
        # instance's queue moves on (a retry would hold it again for as long).
        raise PermanentSendError(f"media could not be fetched from {url}: {type(error).__name__}: {error}") from None
    except httpx.HTTPError as error:
        raise RetryableSendError(f"media download failed: {error}") from None
