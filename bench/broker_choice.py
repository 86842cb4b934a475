"""Why the broker is dramatiq-postgres and not dramatiq-pg (DESIGN.md §0): the evidence, reproduced.

    .venv/bin/python bench/broker_choice.py [--order 2000] [--drain 20000] [--future 5000] [--timeout 30]
                                            [--only dramatiq-pg|dramatiq-postgres]

dramatiq-pg 0.12 pins dramatiq<2, so it gets its own venv, `bench/.venv-dramatiq-pg` (made on the first run
with `dramatiq-pg` and `psycopg2-binary`). Every measurement runs in a child process
(`bench/broker_choice_child.py`) with that broker's venv, on a fresh migrated database; dramatiq-pg's tables
come from its own schema.sql, in schema `dramatiq_pg` (its default `dramatiq` is dramatiq-postgres' in our
migrations). A child that crashes or hangs is a result, not a failure of this script. `--only` measures one
broker: `--only dramatiq-postgres` needs no side venv, installs nothing (what the test suite runs).

1. Order within one queue: `order` messages numbered 0..N-1 on one queue, consumed by one worker thread with
   prefetch 1 (take, process, ack, take the next), in three situations: the worker runs while they are
   enqueued; they wait for the worker in a table with history (N earlier messages went through it); the
   same, with a VACUUM (what autovacuum does on its own) halfway through the backlog.
2. Sustained load: `drain` no-op messages queued beforehand, drained by a worker with 8 threads (prefetch 8);
   messages/s from worker start to the last ack, and the most advisory locks held meanwhile.
3. Due messages behind far-future ones: a worker with 8 threads; `future` messages sent with a one-day
   delay, then one message without delay and one with a 1 ms delay (the path every message with an `eta`
   takes); how long each takes to be processed, how many messages the worker holds, and its RSS. Once with
   dramatiq's default delay prefetch (1000 per thread), once with 1 (what `workers/main.py` sets).

`--timeout`: a step that makes no progress for that many seconds ends there (a due message not processed
by then is reported so); a child still running after 10× that is killed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from harness import ROOT, database, print_table, workdir

BENCH = ROOT / "bench"
CHILD = BENCH / "broker_choice_child.py"
PG_VENV = BENCH / ".venv-dramatiq-pg"
PG_PYTHON = PG_VENV / "bin" / "python"
PG_REQUIREMENTS = ["dramatiq-pg==0.12.*", "psycopg2-binary"]
BROKERS = ["dramatiq-pg", "dramatiq-postgres"]

ADVISORY_LOCKS = """
    SELECT count(*) FROM pg_locks
     WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
PENDING = {"dramatiq-pg": "SELECT count(*) FROM dramatiq_pg.queue WHERE state IN ('queued', 'consumed')",
           "dramatiq-postgres": "SELECT count(*) FROM dramatiq.queue WHERE state IN ('queued', 'consumed')"}


def ensure_pg_venv() -> None:
    """The side venv for dramatiq-pg; made once, kept afterwards."""
    check = [str(PG_PYTHON), "-c", "import dramatiq_pg, psycopg2"]
    if PG_PYTHON.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return
    print(f"Creating {PG_VENV.relative_to(ROOT)} with {' '.join(PG_REQUIREMENTS)} ...", file=sys.stderr)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    subprocess.run([str(base), "-m", "venv", str(PG_VENV)], check=True)
    subprocess.run([str(PG_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *PG_REQUIREMENTS], check=True)
    subprocess.run(check, check=True)


class LockSampler(threading.Thread):
    """The most advisory locks held in the database while a child runs."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.max = 0
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.2):
                try:
                    self.max = max(self.max, conn.execute(ADVISORY_LOCKS).fetchone()[0])
                except psycopg.Error:
                    pass


def run_child(work: Path, broker: str, measure: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One measurement on a fresh database; always returns a result (with the error if the child died)."""
    python = str(PG_PYTHON) if broker == "dramatiq-pg" else sys.executable
    with database(work) as url:
        sampler = LockSampler(url)
        sampler.start()
        started = time.monotonic()
        proc = subprocess.Popen([python, str(CHILD), measure, broker, url, json.dumps(params)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=10 * timeout)
            died = None if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            died = f"killed after {10 * timeout:.0f} s"
        sampler.done.set()
        sampler.join()
        lines = out.strip().splitlines()
        try:
            result: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            tail = err.strip().splitlines()[-1:] or [""]
            result = {"errors": [f"child died ({died}): {tail[0][:160]}"]}
            if measure == "drain":
                with psycopg.connect(url) as conn:
                    pending = conn.execute(PENDING[broker]).fetchone()[0]
                result.update(drained=params["n"] - pending, seconds=time.monotonic() - started)
        result["locks"] = sampler.max
        return result


def error_text(result: dict[str, Any]) -> str:
    errors = result.get("errors") or []
    if not errors:
        return "none"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return errors[0].replace("|", "/") + more


def seconds(value: float | None, timeout: float) -> str:
    return f"not within {timeout:.0f} s" if value is None else f"{value:.3f} s"


def measure_order(work: Path, brokers: list[str], total: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for scenario, label in [("live", "worker running while enqueued"),
                            ("backlog", "backlog in a table with history"),
                            ("backlog-vacuum", "same, vacuum halfway through the backlog")]:
        for broker in brokers:
            r = run_child(work, broker, "order", {"n": total, "stall": timeout, "scenario": scenario}, timeout)
            rows.append({"broker": broker, "situation": label, "consumed": f"{r.get('consumed', 0)} / {total}",
                         "order kept": "yes" if r.get("in_order") else "no",
                         "inversions": r.get("inversions", "-"),
                         "first consumed": " ".join(map(str, r.get("first", []))) or "-",
                         "error": error_text(r)})
    return rows


def measure_drain(work: Path, brokers: list[str], total: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for broker in brokers:
        r = run_child(work, broker, "drain", {"n": total, "stall": timeout}, timeout)
        drained, spent = r.get("drained", 0), r.get("seconds", 0.0)
        rows.append({"broker": broker, "drained": f"{drained} / {total}",
                     "msg/s": round(drained / spent) if drained and spent else 0,
                     "max advisory locks": r["locks"], "error": error_text(r)})
    return rows


def measure_future(work: Path, brokers: list[str], total: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for delay_prefetch, label in [(None, "default (8 × 1000)"), (1, "1")]:
        for broker in brokers:
            params: dict[str, Any] = {"n": total, "stall": timeout}
            if delay_prefetch is not None:
                params["delay_prefetch"] = delay_prefetch
            r = run_child(work, broker, "future", params, timeout)
            rss = f"{r['rss_start']:.0f} → {r['rss_end']:.0f}" if "rss_end" in r else "-"
            rows.append({"broker": broker, "delay prefetch": label,
                         "held by worker": f"{r.get('held', '-')} / {total}",
                         "no-delay msg processed after": seconds(r.get("plain"), timeout),
                         "due msg (1 ms delay) processed after": seconds(r.get("due"), timeout),
                         "max advisory locks": r["locks"], "worker RSS MB": rss, "error": error_text(r)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, default=2000, help="messages in the order test")
    parser.add_argument("--drain", type=int, default=20_000, help="no-op messages to drain")
    parser.add_argument("--future", type=int, default=5000, help="far-future messages before the due one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without progress that end a step")
    parser.add_argument("--only", choices=BROKERS, help="measure this broker alone (dramatiq-postgres: no side venv)")
    args = parser.parse_args()
    brokers = [args.only] if args.only else BROKERS
    if "dramatiq-pg" in brokers:
        ensure_pg_venv()
    with workdir() as work:
        print_table(f"Order within one queue ({args.order} messages, 1 worker thread, prefetch 1)",
                    measure_order(work, brokers, args.order, args.timeout))
        print_table(f"Sustained load ({args.drain} no-op messages, 8 threads)",
                    measure_drain(work, brokers, args.drain, args.timeout))
        print_table(f"Due messages behind {args.future} far-future ones (8 threads)",
                    measure_future(work, brokers, args.future, args.timeout))


if __name__ == "__main__":
    main()
