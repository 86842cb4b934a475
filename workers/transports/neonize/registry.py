"""neonize's client registry, and the lock every call into it goes through.

neonize's Go side keeps its clients in plain Go maps (`clients`, `StopSignal`, `eventChannel`)
with no lock of its own. A read concurrent with a write is a fatal Go error that ends the
process, and with it every session it holds. Every Go call reads the maps once, on entry (to
find its client). `Neonize()` (inside `connect()`) writes `StopSignal`, opens the store (pool,
upgrade), writes `eventChannel`, reads the device, writes `clients`, then dials WhatsApp; after
the handshake it reads `eventChannel` and `clients` itself (`CallbackFunction`, `FetchMe`) and
hands Python its first callback (event 0, the account), then blocks for the life of the
connection. `Stop` reads, disconnects, and deletes. So:

- a call that reads (send, upload, presence, logout) holds the shared side for a short *lease*
  (`READ_LEASE`): long enough for the Go function to have looked its client up, not for the whole
  network call, which may hang. A read that cannot get in within `READ_WAIT` sends nothing and
  raises `InstanceDisconnected` (the head waits: no attempt is spent on another session's connect);
- a connect (`Connecting`) holds the exclusive side from before `Neonize()` until its dial
  reaches this process's dial gate (gate.py): every write is done by then, in program order, and
  nothing was waited for but the store. It then holds nothing until WhatsApp's first bytes for
  it pass the gate (without them the handshake cannot end, and the client cannot reach its own
  map reads; the gate waits for a connect that is writing before it lets them through), and from
  then the shared side (other readers pass, writers wait) until the client's first callback,
  which Go makes after its own reads, or until `connect()` returns. A dial that is never answered
  holds nobody up;
- `Stop` holds the exclusive side, but only once its client has no dial of its own in progress
  (whatsmeow's `Disconnect` waits for the socket lock that a dial holds): the gate ends the
  client's tunnels first, and a connect still dialing is waited for outside the lock.

Writers are preferred, so a steady stream of sends cannot starve a connect or a stop, except
while connects are dialing: a writer waits for those anyway, so reads go on meanwhile (no new
dial can start while a writer waits, and once they are over reads wait for it).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from workers.transports.base import InstanceDisconnected

if TYPE_CHECKING:
    from neonize.client import NewClient
    from neonize.proto.Neonize_pb2 import JID

logger = logging.getLogger("wmq.whatsapp")

T = TypeVar("T")

READ_LEASE = 1.0
#: How long a reader waits for a connect's or stop's writes (the store's queries: its URL's
#: `connect_timeout` is 5 s) before its message waits instead.
READ_WAIT = 6.0
#: How long a stop waits, outside the lock, for a dial of its client to end (whatsmeow's own
#: bounds: the websocket dial, then 20 s for the handshake's answer).
DIAL_END_WAIT = 90.0
#: How long WhatsApp's first bytes for a client wait at the gate for a connect's writes (the
#: store's queries, bounded by its URL's 5 s `connect_timeout`) before its dial is cut.
HANDSHAKE_WAIT = 30.0


class Hold:
    """One hold of the lock, released once, by whichever comes first (the caller, a lease timer,
    a session's first callback)."""

    def __init__(self, lock: RegistryLock, exclusive: bool, dialing: bool = False) -> None:
        self._lock = lock
        self._exclusive = exclusive
        self._released = False
        self._dialing = dialing
        self._guard = threading.Lock()

    def release(self) -> None:
        with self._guard:
            if self._released:
                return
            self._released = True
        self._lock._release(self._exclusive, self._dialing)

    def downgrade(self) -> bool:
        """Exclusive → shared, atomically (no writer can come in between); False when released."""
        with self._guard:
            if self._released or not self._exclusive:
                return False
            self._exclusive = False
            self._dialing = True
            self._lock._downgrade()
            return True

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.daemon = True
        timer.start()
        return timer


class RegistryLock:
    """A readers–writer lock whose holds can be released from any thread."""

    def __init__(self, *, lease: float = READ_LEASE, wait: float = READ_WAIT) -> None:
        self.lease = lease
        self.wait = wait
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        #: Shared holds of connects between their dial and their first callback (seconds long).
        self._dialing = 0
        #: For tests: reads that waited for a writer, reads refused, the most readers at once,
        #: and the longest exclusive hold (seconds).
        self.stats: dict[str, float] = {"reads_waited": 0, "reads_refused": 0, "max_readers": 0,
                                        "longest_exclusive": 0.0}
        self._exclusive_since = 0.0

    def _may_read(self) -> bool:
        """Not during a write; and not ahead of a waiting writer, unless that writer is waiting for
        dials anyway (then a read costs it nothing: no new dial starts while it waits, and once
        the dials are over, reads wait for it)."""
        return not self._writer and (not self._writers_waiting or self._dialing > 0)

    def _acquire_read(self) -> Hold:
        with self._cond:
            if not self._may_read():
                self.stats["reads_waited"] += 1
            if not self._cond.wait_for(self._may_read, self.wait):
                self.stats["reads_refused"] += 1
                raise InstanceDisconnected(f"WhatsApp sessions of this worker were being connected or stopped for"
                                           f" {self.wait:g}s; nothing was sent, the message waits")
            self._readers += 1
            self.stats["max_readers"] = max(self.stats["max_readers"], self._readers)
        return Hold(self, exclusive=False)

    def _acquire_handshake(self, wait: float) -> Hold:
        """A shared hold for a client whose handshake may now finish (WhatsApp's first bytes for
        it are about to pass the gate): it waits for a writer, holding or waiting, to be done."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writer and not self._writers_waiting, wait):
                raise TimeoutError(f"neonize's registry was being written for {wait:g}s")
            self._readers += 1
            self._dialing += 1
        return Hold(self, exclusive=False, dialing=True)

    def _acquire_write(self) -> Hold:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writer = True
            self._exclusive_since = time.monotonic()
        return Hold(self, exclusive=True)

    def _note_exclusive_end(self) -> None:
        held = time.monotonic() - self._exclusive_since
        self.stats["longest_exclusive"] = max(self.stats["longest_exclusive"], held)

    def _downgrade(self) -> None:
        with self._cond:
            self._note_exclusive_end()
            self._writer = False
            self._readers += 1
            self._dialing += 1
            self._cond.notify_all()

    def _release(self, exclusive: bool, dialing: bool = False) -> None:
        with self._cond:
            if exclusive:
                self._note_exclusive_end()
                self._writer = False
            else:
                self._readers -= 1
                self._dialing -= dialing
            self._cond.notify_all()

    @property
    def exclusive(self) -> bool:
        """For tests: whether a writer holds the lock now."""
        return self._writer

    def read(self, call: Callable[[], T]) -> T:
        """Run a Go call that looks its client up, holding the shared side for the lease."""
        hold = self._acquire_read()
        try:
            timer = hold.release_after(self.lease)
            try:
                return call()
            finally:
                timer.cancel()
        finally:
            hold.release()

    def write(self, call: Callable[[], T]) -> T:
        """Run a Go call that writes the maps (`Stop`), alone."""
        hold = self._acquire_write()
        try:
            return call()
        finally:
            hold.release()

    def connecting(self) -> Connecting:
        """The holds of one connect: exclusive now, for `Neonize()`'s writes."""
        return Connecting(self)


class Connecting:
    """One `connect()` of one client through the lock: exclusive while neonize writes its maps,
    shared while neonize's own reads after the handshake may run, nothing otherwise.

    `dialed()`: the client's dial reached the gate (every write is done); its hold goes down to
    shared for the Go call made then, and is released once that is done: until WhatsApp answers
    through the gate, the client cannot finish its handshake, so it cannot reach its own map
    reads, and another connect may write (a dial that hangs unanswered holds nobody up).
    `inbound()`: WhatsApp's first bytes for it are about to pass the gate: shared again (waiting
    for a writer to be done first). `alive()`: Go made its first callback (its own reads are done).
    `returned()`: `connect()` returned. Whichever comes first wins; each releases what is held."""

    def __init__(self, lock: RegistryLock) -> None:
        self.lock = lock
        self.hold = lock._acquire_write()
        self.phase = "writing"
        self._ended = threading.Event()
        self._guard = threading.Lock()

    def dialed(self, then: Callable[[], None] | None = None) -> None:
        """The writes are done: let other readers in. `then` runs under the shared hold (a Go
        call of this client's own, which must not queue behind a waiting writer)."""
        with self._guard:
            if self.phase != "writing":
                return
            self.hold.downgrade()
            self.phase = "dialed"
        if then is not None:
            try:
                then()
            except Exception:
                logger.exception("a call on a client's dial failed")
        with self._guard:
            if self.phase == "dialed":  # nothing from WhatsApp yet: nothing of Go's own can read
                self.hold.release()
                self.phase = "quiet"

    def inbound(self, wait: float = HANDSHAKE_WAIT) -> None:
        """WhatsApp's first bytes for this client are about to pass the gate: from here it may
        finish its handshake and read neonize's maps on its own, so it holds the shared side until
        its first callback (or `connect()` returning)."""
        with self._guard:
            if self.phase == "dialed":
                self.phase = "active"  # still holding from the dial
            if self.phase != "quiet":
                return
        hold = self.lock._acquire_handshake(wait)
        with self._guard:
            if self.phase == "quiet":
                self.hold, self.phase = hold, "active"
                return
        hold.release()  # the connect ended meanwhile

    def alive(self) -> None:
        with self._guard:
            if self.phase == "writing":  # a callback before any dial: the writes are behind it too
                self.hold.downgrade()
            self.phase = "up" if self.phase != "returned" else self.phase
        self.hold.release()
        self._ended.set()

    def returned(self) -> None:
        with self._guard:
            self.phase = "returned"
        self.hold.release()
        self._ended.set()

    def wait_dial_end(self, timeout: float) -> bool:
        """Whether the connect got past its dial (up, or returned) within `timeout`."""
        return self._ended.wait(timeout)


#: The one lock of this process (neonize's maps are per process).
REGISTRY = RegistryLock()
#: The connect under way or last made, by client key: its first callback ends its holds, and a
#: stop waits for its dial to end.
CONNECTS: dict[str, Connecting] = {}


def new_client(store_url: str, key: str, jid: JID | None) -> NewClient:
    """A client under its own registry key. neonize keys a client by `jid.User` when given a JID
    (ignoring `uuid`), so an old client and its replacement would share one key and the old one's
    stop would cancel the new one: the client is made with no JID, then given it. Its
    garbage-collection finalizer (a `Stop` from whatever thread collects it, outside the lock) is
    detached: every client is stopped explicitly, with `stop_client`. Its event dispatcher is
    wrapped so that Go's first callback of a connect (event 0, which neonize keeps to itself)
    ends that connect's hold."""
    from neonize.client import NewClient

    client = NewClient(store_url, jid=None, uuid=key, new_device=jid is None)
    client.jid = jid
    client._stop_finalizer.detach()
    execute = client.event.execute

    def first_callback(*args: Any) -> Any:
        connecting = CONNECTS.get(key)
        if connecting is not None:
            connecting.alive()
        return execute(*args)

    client.event.execute = first_callback
    return client


def stop_client(client: Any, *, connect: Connecting | None = None, dial_end_wait: float = DIAL_END_WAIT) -> None:
    """Stop a client, never while a dial of its own holds whatsmeow's socket lock: its tunnels are
    cut (gate.py), and a connect still dialing is waited for outside the lock. With `connect`,
    only that connect of the client (an event's): a session reuses its client for its next
    connect, which an event of the previous one must not stop."""
    from workers.transports.neonize.gate import GATE

    key = client.uuid.decode()
    if connect is not None and CONNECTS.get(key) is not connect:
        return  # over, and a later connect of this client has begun
    GATE.close(key, connect)
    connecting = connect or CONNECTS.get(key)
    if connecting is not None and not connecting.wait_dial_end(dial_end_wait):
        logger.error("a WhatsApp client's dial did not end: it is left running", extra={"client": key})
        return

    def stop() -> None:
        # Under the exclusive side, which a new connect of this client takes before it registers:
        # the connect seen here is the one whose maps `Stop` deletes.
        current = CONNECTS.get(key)
        if connect is not None and current is not connect:
            return
        client.stop()
        CONNECTS.pop(key, None)
        GATE.forget(key)

    REGISTRY.write(stop)


#: Client keys are unique in the process, over every session it ever held: a session made again
#: for the same instance (its lease came back) must not share a key with its predecessor's client,
#: whose late stop would cancel the new one in neonize's maps.
_GENERATIONS = itertools.count(1)


def client_key(instance_id: UUID) -> str:
    return f"{instance_id}/{next(_GENERATIONS)}"
