"""A client of the dial gate (workers/transports/neonize/gate.py) as whatsmeow is one: an HTTP
CONNECT with the token as Basic proxy credentials. No Go library here: the gate's own tests and
the fake clients of tests/whatsapp_session_checks.py share it."""

from __future__ import annotations

import base64
import socket


def proxy_connect(port: int, token: str, target: str = "web.whatsapp.com:443") -> tuple[socket.socket, bytes]:
    """The socket and the proxy's answer (its head, up to the blank line)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    auth = base64.b64encode(f"{token}:".encode()).decode()
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(1024)
        if not chunk:
            break
        answer += chunk
    return sock, answer
