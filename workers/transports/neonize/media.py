"""Fetch the media a message refers to: an http(s) URL, a `data:` URI, or bare base64.

Kept apart from neonize so it can be tested and reused without the Go library.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from service.outbound import Client, OutboundError
from workers.transports.base import InstanceDisconnected, PermanentSendError, RetryableSendError

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


def known_size(reference: str) -> int | None:
    """The decoded size of inline media (a data: URI, bare base64), None for a URL."""
    if reference.startswith(("http://", "https://")):
        return None
    return len(reference.partition(",")[2] if reference.startswith("data:") else reference) * 3 // 4


class MediaBudget:
    """What media a worker holds in memory at once, from its fetch until its upload is done (a
    medium is copied several times on the way: the download, conversions, neonize's and Go's
    copies, the encrypted upload). Two bounds: at most `large` media of `large_at` bytes or more
    (or of a size not known before the download: a URL) at a time, and their bytes together
    within `total` (a single larger one alone). A send that cannot get its share within `wait`
    seconds waits (InstanceDisconnected: snoozed, no attempt spent): nothing was sent."""

    def __init__(self, *, total: int, large: int, large_at: int, wait: float) -> None:
        self.total, self.large, self.large_at, self.wait = total, large, large_at, wait
        self._changed = threading.Condition()
        self.used = 0  # bytes charged, all claims
        self.large_used = 0  # large slots taken
        self.peak = 0  # the most bytes charged at once (for the bench)

    @contextmanager
    def claim(self) -> Iterator[MediaClaim]:
        """One message's media: everything it took is given back when the build is over."""
        claim = MediaClaim(self)
        try:
            yield claim
        finally:
            claim.release()

    def _take(self, claim: MediaClaim, nbytes: int, slot: bool) -> None:
        deadline = time.monotonic() + self.wait

        def fits() -> bool:
            others = self.used - claim.bytes
            return (not slot or self.large_used < self.large) and (others == 0 or others + nbytes <= self.total)

        with self._changed:
            while not fits():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InstanceDisconnected(
                        f"this worker's media memory is in use by other sends ({self.used} bytes, "
                        f"{self.large_used} large media); waiting")
                self._changed.wait(left)
            self.used += nbytes
            self.large_used += slot
            self.peak = max(self.peak, self.used)
        claim.bytes += nbytes
        claim.slots += slot

    def _give(self, nbytes: int, slots: int) -> None:
        with self._changed:
            self.used -= nbytes
            self.large_used -= slots
            self._changed.notify_all()


class MediaClaim:
    """The share of the budget one message's build holds."""

    def __init__(self, budget: MediaBudget) -> None:
        self.budget = budget
        self.bytes = 0
        self.slots = 0

    def fetch(self, inner: Callable[[str], Media]) -> Callable[[str], Media]:
        """`inner`, within the budget: a large medium's slot before it is fetched (a URL's size is
        not known before: it counts as large until it is), its bytes charged as they are known."""
        budget = self.budget

        def fetched(reference: str) -> Media:
            size = known_size(reference)
            large = size is None or size >= budget.large_at
            if size is not None or large:
                budget._take(self, size or 0, large)
            media = inner(reference)
            if size is None:
                budget._take(self, len(media.data), False)
                if len(media.data) < budget.large_at:  # small after all: its slot is free again
                    self.slots -= 1
                    budget._give(0, 1)
            return media

        return fetched

    def release(self) -> None:
        self.budget._give(self.bytes, self.slots)
        self.bytes = self.slots = 0


#: This worker's media budget: at most 4 large media (8 MB and up, or a URL until it is fetched)
#: at a time, 256 MB of media in all. Measured with bench/media_memory.py.
BUDGET = MediaBudget(total=256 * 1024 * 1024, large=4, large_at=8 * 1024 * 1024, wait=10.0)
