"""neonize's client registry, and the lock every call into it goes through.

neonize's Go side keeps its clients in plain Go maps (`clients`, `StopSignal`, `eventChannel`)
with no lock of its own. A read concurrent with a write is a fatal Go error that ends the
process, and with it every session it holds. Every Go call reads the maps once, on entry (to
find its client); `Neonize()` (inside `connect()`) writes them early on and then blocks for the
life of the connection; `Stop` deletes from them. So:

- a call that reads (send, upload, presence, pair phone, logout) holds the shared side for a
  short *lease* (`READ_LEASE`): long enough for the Go function to have looked its client up, not
  for the whole network call, which may hang (an abandoned call must not block the others);
- `Stop` holds the exclusive side for its whole call;
- a connect holds the exclusive side from before `Neonize()` starts until its client gives the
  first sign of life (any event or QR code, which Go sends only after its writes), or `connect()`
  returns, or `CONNECT_GRACE` passes (the writes follow two local store queries, bounded by the
  store URL's `connect_timeout`).

Writers are preferred, so a steady stream of sends cannot starve a connect or a stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from workers.transports.base import RetryableSendError

if TYPE_CHECKING:
    from neonize.client import NewClient
    from neonize.proto.Neonize_pb2 import JID

T = TypeVar("T")

READ_LEASE = 1.0
CONNECT_GRACE = 3.0
#: How long a reader waits for a connect or stop to finish its writes (more than both bounds).
READ_WAIT = 2 * CONNECT_GRACE


class Hold:
    """One hold of the lock, released once, by whichever comes first (the caller, a lease timer,
    a session's first event)."""

    def __init__(self, lock: RegistryLock, exclusive: bool) -> None:
        self._lock = lock
        self._exclusive = exclusive
        self._released = False
        self._guard = threading.Lock()

    def release(self) -> None:
        with self._guard:
            if self._released:
                return
            self._released = True
        self._lock._release(self._exclusive)

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.daemon = True
        timer.start()
        return timer


class RegistryLock:
    """A readers–writer lock whose holds can be released from any thread."""

    def __init__(self, *, lease: float = READ_LEASE, grace: float = CONNECT_GRACE, wait: float = READ_WAIT) -> None:
        self.lease = lease
        self.grace = grace
        self.wait = wait
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        #: For tests: how many reads waited for a writer, and the most readers seen at once.
        self.stats = {"reads_waited": 0, "max_readers": 0}

    def _acquire_read(self) -> Hold:
        with self._cond:
            if self._writer or self._writers_waiting:
                self.stats["reads_waited"] += 1
            if not self._cond.wait_for(lambda: not self._writer and not self._writers_waiting, self.wait):
                raise RetryableSendError(f"WhatsApp sessions were being connected for {self.wait:g}s; nothing was sent")
            self._readers += 1
            self.stats["max_readers"] = max(self.stats["max_readers"], self._readers)
        return Hold(self, exclusive=False)

    def _acquire_write(self) -> Hold:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        return Hold(self, exclusive=True)

    def _release(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                self._writer = False
            else:
                self._readers -= 1
            self._cond.notify_all()

    def read(self, call: Callable[[], T]) -> T:
        """Run a Go call that looks its client up, holding the shared side for the lease."""
        hold = self._acquire_read()
        timer = hold.release_after(self.lease)
        try:
            return call()
        finally:
            timer.cancel()
            hold.release()

    def write(self, call: Callable[[], T]) -> T:
        """Run a Go call that writes the maps (`Stop`), alone."""
        hold = self._acquire_write()
        try:
            return call()
        finally:
            hold.release()

    def connect_gate(self) -> Hold:
        """The exclusive side for a connect's writes: release it on the client's first event;
        it releases itself after the grace."""
        hold = self._acquire_write()
        hold.release_after(self.grace)
        return hold


#: The one lock of this process (neonize's maps are per process).
REGISTRY = RegistryLock()


def new_client(store_url: str, key: str, jid: JID | None) -> NewClient:
    """A client under its own registry key. neonize keys a client by `jid.User` when given a JID
    (ignoring `uuid`), so an old client and its replacement would share one key and the old one's
    stop would cancel the new one: the client is made with no JID, then given it. Its
    garbage-collection finalizer (a `Stop` from whatever thread collects it, outside the lock) is
    detached: every client is stopped explicitly, with `stop_client`."""
    from neonize.client import NewClient

    client = NewClient(store_url, jid=None, uuid=key, new_device=jid is None)
    client.jid = jid
    client._stop_finalizer.detach()
    return client


def stop_client(client: Any) -> None:
    REGISTRY.write(client.stop)


def client_key(instance_id: UUID, generation: int) -> str:
    return f"{instance_id}/{generation}"
