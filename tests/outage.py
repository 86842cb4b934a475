"""A PostgreSQL of the test's own, which it can stop and start (pgserver's pg_ctl, as pgserver
runs it), for database outages with real processes on top."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from service.db.embedded import start_embedded_postgres
from service.db.migrations import migrate


class Database:
    def __init__(self, directory: Path) -> None:
        self.server = start_embedded_postgres(directory)
        admin = self.server.get_uri()
        self.socket_dir = conninfo_to_dict(admin)["host"]
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE wmq")
        self.url = make_conninfo(admin, dbname="wmq")
        migrate(self.url)

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        """Stop the server as an operator or a failover would (fast shutdown: connections cut)."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> float:
        """Start it again; the monotonic time at which it accepts connections."""
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start")
        return time.monotonic()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Stop the server whatever pgserver knows of it: once restarted by pg_ctl it runs under
        a postmaster pgserver did not start, which its cleanup would leave running."""
        try:
            self._pg_ctl("-w", "-m", "fast", "stop")
        except Exception:
            pass  # already stopped
        self.server.cleanup()
