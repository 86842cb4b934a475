"""A database at schema version 6, with messages in flight, upgraded by the processes that start
on it: nothing is lost, and its queues flow on in order (tests/fast/test_migrations.py checks
the schema itself)."""

from __future__ import annotations

from pathlib import Path

from service.db.migrations import SQL_DIR
from tests.fast.test_migrations import FIXTURE, restore
from tests.stack import ADMIN_TOKEN, Stack

A = "aaaaaaaa-0000-0000-0000-000000000001"  # three scheduled, the head dispatched
B = "bbbbbbbb-0000-0000-0000-000000000002"  # one completed, one typing (phase 2 in the broker), one waiting
C = "cccccccc-0000-0000-0000-000000000003"  # paused, one message
D = "dddddddd-0000-0000-0000-000000000004"  # neonize, one message in the sessions queue


def test_an_upgraded_database_sends_what_it_held_in_order(empty_database: str, tmp_path: Path) -> None:
    restore(empty_database, FIXTURE)
    stack = Stack(empty_database, tmp_path, {})
    try:
        stack.start(workers=1)  # the API migrates the database as it starts
        migrations = len(list((SQL_DIR / "migrations").glob("*.sql")))
        assert stack.one("SELECT count(*) AS n FROM schema_migrations")["n"] == migrations
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        removed = stack.http.delete(f"/instances/{D}", params={"force": "true"}, headers=admin)
        assert removed.json() == {"removed": True, "cancelled": 1}

        a = [r["zaap_id"] for r in stack.all("SELECT zaap_id FROM messages WHERE instance_id = %s ORDER BY sequence",
                                             (A,))]
        b = [r["zaap_id"] for r in stack.all("SELECT zaap_id FROM messages WHERE instance_id = %s ORDER BY sequence",
                                             (B,))]
        stack.wait_completed(a + b[1:], timeout=60)
        assert [s["zaap_id"] for s in stack.sends(A)] == a
        assert [s["zaap_id"] for s in stack.sends(B)] == b[1:]  # the first was sent before the upgrade

        paused = {"id": C, "token": "tok" + C[:8]}
        assert stack.job("c" * 32)["status"] == "scheduled"
        assert stack.http.post(f"{stack.base(paused)}/resume").status_code == 200
        stack.wait_completed(["c" * 32], timeout=30)
        assert stack.job("e" * 32)["status"] == "cancelled"
    finally:
        stack.stop()
