"""A webhook receiver on a local port, for the tests of webhooks and their metrics."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from typing import Any

from tests.stack import Stack


class Receiver:
    """A webhook receiver on a local port: records every request; `fail` answers 500 that many
    times first; `delay` makes every answer slow."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail = 0
        self.delay = 0.0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "raw": body,
                                          "body": json.loads(body), "at": time.monotonic()})
                time.sleep(receiver.delay)
                failing = receiver.fail > 0
                receiver.fail -= failing
                self.send_response(500 if failing else 200)
                self.end_headers()
                self.wfile.write(b"busy" if failing else b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str | None = None) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if path is None or r["path"] == path]


def configure(stack: Stack, instance: dict[str, Any], route: str, url: str) -> None:
    response = stack.http.put(f"{stack.base(instance)}/{route}", json={"value": url})
    assert response.status_code == 200 and response.json() == {"value": True}, response.text


def verify(secret: str, request: dict[str, Any], delivery: str | None = None) -> bool:
    """What a receiver does with X-WMQ-Signature (README): any `v2` made with the secret over the
    time, the delivery id (`delivery`: the id to check, by default the X-WMQ-Delivery header)
    and the body."""
    parts = [part.split("=", 1) for part in request["headers"]["X-WMQ-Signature"].split(",")]
    timestamp = dict(parts)["t"]
    delivery = request["headers"]["X-WMQ-Delivery"] if delivery is None else delivery
    signed = f"{timestamp}.{delivery}.".encode() + request["raw"]
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, value) for key, value in parts if key == "v2")
