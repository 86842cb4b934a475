"""Hostile far ends on 127.0.0.1 (the only addresses tests may target): a webhook receiver, a
media server or a database host that never answers, trickles, or answers what it is told. Used
by the hostile-tenant tests, the background threads' tests and bench/webhooks.py."""

from __future__ import annotations

import socket
import threading
import time


class Listener:
    """A raw TCP listener on 127.0.0.1 that counts connections and answers as `behaviour` says:
    `never` (reads the request, answers nothing), `trickle` (a byte of the status line every
    0.3 s), or a fixed `answer` (bytes)."""

    def __init__(self, behaviour: str = "never", answer: bytes = b"") -> None:
        self.behaviour, self.answer = behaviour, answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            conn.recv(65536)
            if self.behaviour == "answer":
                conn.sendall(self.answer)
                time.sleep(0.5)
            elif self.behaviour == "trickle":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 100:
                    if self._stop.wait(0.3):
                        break
                    conn.sendall(bytes([byte]))
            else:
                self._stop.wait(60)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
