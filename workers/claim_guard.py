"""The check right before the irreversible write: is this send still ours?

A worker that stood still (SIGSTOP, a VM pause, a long GC) past the heartbeat TTL has had its
messages rescued and sent by others meanwhile; when it runs again, its threads go on from where
they stood. One that stood between its claim and the write must not write then: its copy would
reach the contact after the instance's later messages. So the transport calls the guard right
before the frame leaves (`OutgoingMessage.before_write`):

- a claim made less than `bound` ago (the common case) is taken as it is, with no query: within
  the bound of the claim, nobody can have judged this worker dead (`bound` < TTL − heartbeat
  interval);
- an older one is checked in the database (sql `wmq_claim_holds`), which also writes this worker's
  heartbeat under the instance lock, so the check stays good for another `bound`.

Either way the guard returns the database time by which the write must land (the simulator
refuses a later one, as a receiver with a fence would; WhatsApp cannot, which leaves the
microseconds between the check and the socket write open). A claim that no longer holds raises
`ClaimLost`: nothing is written, and the message is left to whoever holds it now.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from uuid import UUID

from service.core import transitions
from service.core.context import Core
from service.core.models import Claimed
from service.settings import Settings
from workers.bookkeeping import persist
from workers.transports import ClaimLost, InstanceDisconnected

logger = logging.getLogger("wmq.deliver")

#: How long a check that meets database errors is retried before the send waits (nothing sent).
CHECK_RETRY_SECONDS = 30.0


def guard_bound(settings: Settings) -> float:
    """Seconds a claim (or a check) is taken as current: half of what is left of the TTL after one
    heartbeat interval, the longest this worker's last heartbeat can be old while it runs."""
    return (settings.message_queue_heartbeat_ttl - settings.message_queue_heartbeat_interval) / 2


class ClaimGuard:
    """`before_write` for one claimed send."""

    def __init__(self, core: Core, claim: Claimed, worker_id: UUID, bound: float,
                 retry_for: float = CHECK_RETRY_SECONDS) -> None:
        self.core = core
        self.claim = claim
        self.worker_id = worker_id
        self.bound = bound
        #: How long a check meeting database errors is retried: well within the job timeout, so
        #: that a send whose check could not be made waits rather than timing out as uncertain.
        self.retry_for = retry_for
        #: The last time the claim was known to hold: this process's clock, the database's.
        self.checked_at = claim.claimed_at
        self.checked_db_at = claim.claimed_db_at
        #: For the log and the tests: how many times the database was asked.
        self.checks = 0

    def __call__(self) -> datetime | None:
        if time.monotonic() - self.checked_at < self.bound:
            return self._deadline()
        asked_at = time.monotonic()
        ctx = self.claim.log_context()
        held = persist("the claim check", self._check, ctx, time.monotonic() + self.retry_for)
        if held is None:
            raise InstanceDisconnected("could not check that the message is still this worker's; nothing was sent")
        if held is False:
            age = round(asked_at - self.claim.claimed_at, 3)
            logger.warning("the claim no longer holds: this worker stood still and the message went on "
                           "without it; nothing written", extra={**ctx, "claim_age_s": age})
            raise ClaimLost("the message is no longer this worker's (it stood still past the TTL); nothing was sent")
        self.checked_at, self.checked_db_at = asked_at, held
        return self._deadline()

    def _check(self) -> datetime | bool:
        self.checks += 1
        assert self.claim.dispatch_id is not None
        checked = transitions.claim_holds(self.core, self.claim.zaap_id, self.worker_id, self.claim.dispatch_id)
        return checked if checked is not None else False

    def _deadline(self) -> datetime | None:
        if self.checked_db_at is None:
            return None
        return self.checked_db_at + timedelta(seconds=self.bound)
