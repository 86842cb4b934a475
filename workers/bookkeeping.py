"""Retrying the bookkeeping transactions a worker cannot simply drop (a claim, a failure, a
completed send) through passing database errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("wmq.bookkeeping")
T = TypeVar("T")


def persist(what: str, action: Callable[[], T], ctx: dict[str, Any], deadline: float | None) -> T | None:
    """Run a bookkeeping transaction, retrying database errors with backoff until it succeeds
    or `deadline` (monotonic; None: for as long as the process lives) passes."""
    delay = 0.1
    while True:
        try:
            return action()
        except Exception:
            if deadline is not None and time.monotonic() > deadline:
                logger.exception(f"could not record {what}; left to the rescuer", extra=ctx)
                return None
            logger.warning(f"recording {what} failed; retrying", extra=ctx, exc_info=True)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
