"""The parts of the neonize transport that need no Go library: error mapping, media fetching,
the session store's URL. (Everything that loads neonize runs in subprocesses: tests/test_whatsapp.py.)"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import psycopg
import pytest

from tests.stack import ROOT
from workers.transports.base import (
    InstanceDisconnected,
    PermanentSendError,
    RetryableSendError,
    UncertainSendError,
)
from workers.transports.neonize.errors import REACH_OUT_TIME_LOCK, REFUSALS, ReachOutTimeLock, map_error
from workers.transports.neonize.media import fetch_media
from workers.transports.neonize.numbers import brazil_variants
from workers.transports.neonize.registry import RegistryLock
from workers.transports.neonize.store import StoreError, check_schema, store_url

#: The modules that load neonize's Go library on import: the worker imports them only once a
#: `neonize` instance exists, and the tests only in subprocesses.
LOADS_GO = (
    "tests.whatsapp_checks",
    "workers.transports.neonize.messages",
    "workers.transports.neonize.sessions",
    "workers.transports.neonize.transport",
)

#: Run in a fresh interpreter: collect the whole suite as pytest does (every test module, conftest
#: and what they import), then import every module of service/ and workers/ but LOADS_GO (what
#: the tests reach at run time, such as the core's lazy imports), then the modules named on the
#: command line. A tripwire on the import system records the import chain that loads neonize.
GO_PROBE = r"""
import importlib, json, pkgutil, sys, traceback

LOADS_GO = set(json.loads(sys.argv[1]))
chains = []

class Tripwire:
    def find_spec(self, name, path=None, target=None):
        if name == "neonize" and not chains:
            stack = [f for f in traceback.extract_stack() if not f.filename.startswith("<frozen")]
            chains.append("".join(traceback.format_list(stack[-12:])))
        return None

def tripped(by):
    if chains:
        print(f"GO LOADED by {by}:\n{chains[0]}")
        sys.exit(1)

sys.meta_path.insert(0, Tripwire())
import pytest
code = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider", "tests"])
assert code == 0, f"collecting the suite failed: {code}"
tripped("collecting the suite")
import service, workers
names = [m.name for package in (service, workers)
         for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".") if m.name not in LOADS_GO]
for name in names + sys.argv[2:]:
    importlib.import_module(name)
    tripped(f"importing {name}")
assert "neonize" not in sys.modules
print(f"no Go library after collecting the suite and importing {len(names)} modules")
"""


def go_probe(*also: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", GO_PROBE, json.dumps(LOADS_GO), *also], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_go_library_stays_out_of_the_test_process() -> None:
    """A Go panic would kill pytest: nothing that pytest imports for the suite, nor any module the
    tests may reach at run time, may load neonize. Checked in a fresh interpreter, so the answer
    does not depend on which tests were collected or ran before this one."""
    clean = go_probe()
    assert clean.returncode == 0, f"{clean.stdout[-6000:]}\n{clean.stderr[-4000:]}"
    assert "no Go library after collecting the suite" in clean.stdout
    # The probe does see the Go library when a module loads it, and says through which import.
    loaded = go_probe("workers.transports.neonize.messages")
    assert loaded.returncode == 1, f"{loaded.stdout[-6000:]}\n{loaded.stderr[-4000:]}"
    assert "GO LOADED by importing workers.transports.neonize.messages" in loaded.stdout
    assert 'workers/transports/neonize/messages.py", line' in loaded.stdout
    # And, for what it is worth, this process so far.
    assert "neonize" not in sys.modules


class SendMessageError(Exception):
    """Stands in for neonize.exc.SendMessageError: only the message text is mapped."""


#: whatsmeow's own error texts (errors.go, send.go, request.go, socket/constants.go), as neonize
#: hands them over, with what each means for the message being sent.
SEND_ERRORS = [
    # The frame went out; the answer did not come back: uncertain, never a silent retry.
    ("websocket disconnected before message send returned response", UncertainSendError),
    ("websocket disconnected before message send (retry) returned response", UncertainSendError),
    ("timed out waiting for message send response", UncertainSendError),
    ("websocket not connected", UncertainSendError),  # bare: only retryFrame, after the send
    ("frame socket is closed", UncertainSendError),
    # Nothing left.
    ("failed to send message node: websocket not connected", InstanceDisconnected),
    ("failed to send message node: frame socket is closed", InstanceDisconnected),
    ("client is nil", InstanceDisconnected),
    ("the store doesn't contain a device JID", InstanceDisconnected),
    ("failed to dial whatsapp web websocket: dial tcp: lookup web.whatsapp.com: no such host",
     InstanceDisconnected),
    ("failed to get user info for 5511999999999@s.whatsapp.net to fill LID cache: "
     "websocket disconnected before info query returned response", InstanceDisconnected),
    # Never deliverable as it is.
    ("no LID found for 5511999999999@s.whatsapp.net from server", PermanentSendError),
    ("can't send message to unknown server example.com", PermanentSendError),
    ("message recipient must be a user JID with no device part", PermanentSendError),
    ("sending to non-status broadcast lists is not yet supported", PermanentSendError),
    ("failed to get user info for 1@s.whatsapp.net to fill LID cache: info query returned status 400: "
     "bad-request", PermanentSendError),
    # The server's refusal of the message (REFUSALS): nothing delivered, so never a discard at once.
    ("server returned error 403", RetryableSendError),
    ("server returned error 479", RetryableSendError),
    ("server returned error 418", RetryableSendError),  # a refusal we have no row for
    ("server returned error 463", ReachOutTimeLock),  # the reach-out time-lock: the head waits
    ("server returned error 500", UncertainSendError),  # the server failed holding it: it may have gone on
    ("server returned error 503", UncertainSendError),
    # Refused before delivery; may pass later.
    ("failed to get device list: info query timed out", RetryableSendError),
    ("failed to get user info for 1@s.whatsapp.net to fill LID cache: info query returned status 429: "
     "rate-overlimit", RetryableSendError),
    ("can't encrypt message for device: no signal session established with 1.0:0", RetryableSendError),
    # Unknown while writing the frame: it may have gone out.
    ("something nobody has seen before", UncertainSendError),
]


@pytest.mark.parametrize(("message", "kind"), SEND_ERRORS)
def test_whatsmeow_send_errors_map_to_what_they_mean_for_the_message(message: str, kind: type) -> None:
    mapped = map_error(SendMessageError(message), sending=True)
    assert type(mapped) is kind
    assert message in str(mapped) and "SendMessageError" in str(mapped)


def test_every_refusal_row_is_in_the_error_table_with_its_kind_and_reason() -> None:
    tested = {int(message.rsplit(" ", 1)[1]): kind for message, kind in SEND_ERRORS
              if message.startswith("server returned error ")}
    for key, (kind, reason) in REFUSALS.items():
        codes = [key] if isinstance(key, int) else [
            code for code in tested if f"{code // 100}xx" == key and code not in REFUSALS]
        assert codes, f"no test row for the refusal {key}"
        for code in codes:
            assert tested[code] is kind, code
            mapped = map_error(SendMessageError(f"server returned error {code}"), sending=True)
            assert str(mapped).startswith(f"{reason} (SendMessageError: server returned error {code})")


def test_the_reach_out_time_lock_makes_the_head_wait_with_its_reason() -> None:
    mapped = map_error(SendMessageError("server returned error 463"), sending=True)
    assert type(mapped) is ReachOutTimeLock and isinstance(mapped, InstanceDisconnected)
    assert str(mapped).startswith("WhatsApp's reach-out time-lock (463): this account may not start new "
                                  "conversations for now; waiting")
    assert str(mapped).startswith(REACH_OUT_TIME_LOCK)
    # Outside the send call it means the same (nothing was delivered).
    assert type(map_error(SendMessageError("server returned error 463"))) is ReachOutTimeLock


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        # Outside the send call (presence, upload, connect) no message frame was in flight.
        ("server returned error 500", RetryableSendError),
        ("websocket not connected", InstanceDisconnected),
        ("timed out waiting for message send response", RetryableSendError),
        ("something nobody has seen before", RetryableSendError),
        ("failed to dial whatsapp web websocket: dial tcp 127.0.0.1:9: connect: connection refused",
         InstanceDisconnected),
    ],
)
def test_errors_outside_the_send_call_are_never_uncertain(message: str, kind: type) -> None:
    assert type(map_error(SendMessageError(message))) is kind


@pytest.fixture
def media_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/slow":
                time.sleep(1)
                self.send_response(200)
                self.end_headers()
            elif self.path == "/photo.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(b"\x89PNG fake")
            else:
                self.send_response(404 if self.path == "/missing" else 503)
                self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_media_is_fetched_from_urls_data_uris_and_base64(media_server: str) -> None:
    fetched = fetch_media(f"{media_server}/photo.png")
    assert (fetched.data, fetched.mimetype) == (b"\x89PNG fake", "image/png")
    encoded = base64.b64encode(b"%PDF-1.4 tiny").decode()
    assert fetch_media(f"data:application/pdf;base64,{encoded}").mimetype == "application/pdf"
    assert fetch_media(encoded).data == b"%PDF-1.4 tiny"
    with pytest.raises(PermanentSendError, match="HTTP 404"):
        fetch_media(f"{media_server}/missing")
    with pytest.raises(RetryableSendError, match="HTTP 503"):
        fetch_media(f"{media_server}/broken")
    with pytest.raises(PermanentSendError, match="neither"):
        fetch_media("not base64 at all!")
    with pytest.raises(PermanentSendError, match="could not be fetched: could not connect"):
        fetch_media("http://127.0.0.1:9/unreachable.png")  # nothing listens on the discard port
    with pytest.raises(PermanentSendError, match="could not be fetched: timed out after 0.2 s"):
        fetch_media(f"{media_server}/slow", timeout=0.2)


def test_store_url_is_a_postgres_url_in_its_own_schema() -> None:
    assert store_url("host=/tmp/pg dbname=wmq user=postgres", "whatsmeow", "i/1") == (
        "postgresql://postgres@/wmq?search_path=whatsmeow&sslmode=disable&connect_timeout=5"
        "&application_name=wmq-store%3Ai%2F1&host=%2Ftmp%2Fpg")
    assert store_url("postgresql://app:s%40cret@db:5433/wmq?sslmode=require", "wa") == (
        "postgresql://app:s%40cret@db:5433/wmq?search_path=wa&sslmode=require&connect_timeout=5"
        "&application_name=wmq-store%3Ainit")
    # A password with a slash (or any reserved character) stays inside the user info.
    url = store_url("postgresql://app:pa%2Fss%3Fw%23rd@db/wmq", "wa")
    assert url.startswith("postgresql://app:pa%2Fss%3Fw%23rd@db/wmq?")
    parsed = urlsplit(url)
    assert (unquote(parsed.password or ""), parsed.hostname, parsed.path) == ("pa/ss?w#rd", "db", "/wmq")


def test_a_leftover_version_table_in_another_schema_is_named_at_start(database_url: str) -> None:
    """whatsmeow's migrations find tables by name in any schema, so a `public.whatsmeow_version`
    would make them skip creating the store: said plainly instead of failing later."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        check_schema(conn, "whatsmeow")  # a clean database
        conn.execute("CREATE TABLE public.whatsmeow_version (version integer)")
        with pytest.raises(StoreError, match="whatsmeow_version table in schema public"):
            check_schema(conn, "whatsmeow")
        check_schema(conn, "public")  # the store may live there, if told so
        conn.execute("CREATE SCHEMA whatsmeow; CREATE TABLE whatsmeow.whatsmeow_version (version integer)")
        check_schema(conn, "whatsmeow")  # ours exists already: whatsmeow reads its own


def test_the_go_registry_lock_keeps_reads_off_a_connect_and_never_waits_on_a_hung_call() -> None:
    """neonize's Go maps crash the process on a read during a write (registry.py): reads share,
    a connect's writes and a stop exclude them, and a call hung in Go holds nothing past its lease."""
    lock = RegistryLock(lease=0.2, wait=1.0)
    inside: list[str] = []
    both_in = threading.Barrier(2, timeout=5)

    def reader(name: str) -> None:
        def call() -> None:
            inside.append(name)
            both_in.wait()  # two reads at once, or this times out
        lock.read(call)

    readers = [threading.Thread(target=reader, args=(n,)) for n in ("a", "b")]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(5)
    assert sorted(inside) == ["a", "b"] and lock.stats["max_readers"] == 2

    # A read hung in Go: a stop gets through once the lease is over, long before the call ends.
    hung = threading.Event()
    threading.Thread(target=lambda: lock.read(lambda: hung.wait(10)), daemon=True).start()
    time.sleep(0.05)
    started = time.monotonic()
    lock.write(lambda: None)
    assert time.monotonic() - started < 2
    hung.set()

    # A connect's writes hold reads off until its dial reaches the gate (no grace: however long).
    connecting = lock.connecting()
    waited: list[float] = []
    started = time.monotonic()
    reading = threading.Thread(target=lambda: waited.append(lock.read(time.monotonic)))
    reading.start()
    time.sleep(0.1)
    assert not waited, "a read went through during a connect's writes"
    connecting.dialed()
    reading.join(5)
    assert waited and waited[0] - started >= 0.1 and lock.stats["reads_waited"] >= 1
    connecting.alive()
    connecting.returned()  # a second end changes nothing
    assert lock.read(lambda: "still fine") == "still fine"

    # A read that cannot get in within its wait sends nothing and waits without an attempt.
    slow = RegistryLock(lease=0.2, wait=0.2)
    slow.connecting()
    with pytest.raises(InstanceDisconnected, match="nothing was sent, the message waits"):
        slow.read(lambda: "never")


@pytest.mark.parametrize(
    ("phone", "variants"),
    [
        ("5511988887777", ["551188887777"]),  # São Paulo mobile with the ninth digit: also without
        ("551188887777", ["5511988887777"]),  # and the other way round
        ("5521999998888", ["552199998888"]),
        ("551133334444", []),  # a landline (starts 2–5): one form only
        ("4915112345678", []),  # not Brazil
        ("120363025246125244-group", []),
    ],
)
def test_brazilian_mobiles_have_a_form_with_and_without_the_ninth_digit(phone: str, variants: list[str]) -> None:
    assert brazil_variants(phone) == variants
