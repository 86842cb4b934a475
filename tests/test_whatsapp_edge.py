"""The parts of the neonize transport that need no Go library: error mapping, media fetching,
the session store's URL. (Everything that loads neonize runs in subprocesses: tests/test_whatsapp.py.)"""

from __future__ import annotations

import base64
import http.server
import sys
import threading
from collections.abc import Iterator

import pytest

from workers.transports.base import InstanceDisconnected, PermanentSendError, RetryableSendError
from workers.transports.neonize.errors import map_error
from workers.transports.neonize.media import fetch_media
from workers.transports.neonize.store import store_url


def test_the_go_library_stays_out_of_the_test_process() -> None:
    """A Go panic would kill pytest: nothing imported here may load neonize."""
    assert "neonize" not in sys.modules


class SendMessageError(Exception):
    """Stands in for neonize.exc.SendMessageError: only the message text is mapped."""


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("websocket not connected", InstanceDisconnected),
        ("client is nil", InstanceDisconnected),
        ("the store doesn't contain a device JID", InstanceDisconnected),
        ("failed to dial whatsapp web websocket: dial tcp: no such host", InstanceDisconnected),
        ("invalid JID: 123", PermanentSendError),
        ("the number is not on WhatsApp", PermanentSendError),
        ("unsupported media type", PermanentSendError),
        ("server returned error 406", PermanentSendError),
        ("info query timed out", RetryableSendError),
        ("context deadline exceeded", RetryableSendError),
        ("server returned error 503", RetryableSendError),
        ("something nobody has seen before", RetryableSendError),
    ],
)
def test_neonize_errors_map_to_typed_errors(message: str, kind: type) -> None:
    mapped = map_error(SendMessageError(message))
    assert type(mapped) is kind
    assert message in str(mapped) and "SendMessageError" in str(mapped)


@pytest.fixture
def media_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/photo.png":
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


def test_store_url_is_a_postgres_url_in_its_own_schema() -> None:
    assert store_url("host=/tmp/pg dbname=wmq user=postgres", "whatsmeow") == (
        "postgresql://postgres@/wmq?search_path=whatsmeow&sslmode=disable&host=%2Ftmp%2Fpg")
    assert store_url("postgresql://app:s%40cret@db:5433/wmq?sslmode=require", "wa") == (
        "postgresql://app:s%40cret@db:5433/wmq?search_path=wa&sslmode=require")
