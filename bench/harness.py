"""What every benchmark needs: a PostgreSQL (embedded unless BENCH_DATABASE_URL), a fresh
migrated database, and the service's real processes (the tests' Stack)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.db.embedded import start_embedded_postgres  # noqa: E402
from service.db.migrations import migrate  # noqa: E402
from tests.stack import Stack, wait_until  # noqa: E402

__all__ = ["Stack", "cpu_seconds", "create_instances", "database", "percentile", "postgres_cpu_seconds",
           "print_table", "wait_until", "workdir"]


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="wmq-bench-", ignore_cleanup_errors=True) as path:
        yield Path(path)


@contextlib.contextmanager
def database(work: Path) -> Iterator[str]:
    """A fresh, migrated database; dropped afterwards."""
    server = None
    admin = os.environ.get("BENCH_DATABASE_URL")
    if not admin:
        server = start_embedded_postgres(work)
        admin = server.get_uri()
    name = f"wmq_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(admin, dbname=name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        if server is not None:
            server.cleanup()


def create_instances(stack: Stack, count: int, transport: str = "simulator") -> list[dict[str, Any]]:
    """`count` instances of `transport` through the API (8 requests at a time), in order of their
    names; `simulator-session` instances are leased to one worker each, as WhatsApp sessions are."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda n: stack.create_instance(name=f"bench-{n}", transport=transport), range(count)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def postgres_cpu_seconds(url: str) -> float:
    """CPU seconds the whole PostgreSQL server has used so far: the postmaster, its live
    children, and (through the postmaster's reaped-children times) those that have exited.
    On a 2-core machine, CPU per message is the figure noise moves least."""
    with psycopg.connect(url) as conn:
        data_dir = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]  # type: ignore[index]
    postmaster = psutil.Process(int((Path(data_dir) / "postmaster.pid").read_text().split()[0]))
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """A Markdown table, ready to paste into docs/benchmarks.md."""
    print(f"\n### {title}\n")
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return str(value)
