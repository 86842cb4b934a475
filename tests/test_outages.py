"""A database outage is not a death (issue 11): with the database stopped and started again,
the API says so (503, Retry-After, nothing stored) and comes back within a second or two of it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.outage import Database
from tests.stack import Stack, wait_until


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "pg")
    yield database
    database.close()


def test_while_the_database_is_away_the_api_answers_503_and_is_back_within_seconds(database: Database,
                                                                                   tmp_path: Path) -> None:
    stack = Stack(database.url, tmp_path / "stack", {})
    try:
        stack.start(workers=1)
        instance = stack.create_instance()
        stack.send_text(instance, "before")
        with database.down():
            started = time.monotonic()
            answer = stack.http.post(f"{stack.base(instance)}/send-text",
                                     json={"phone": "5511999999999", "message": "during"})
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] == "1" and answer.json()["field"] == "database"
            assert took < 10, f"a send waited {took:.1f}s for the database"
            assert stack.http.get("/readyz").status_code == 503
        back = time.monotonic()

        def sends_again() -> bool:
            try:
                return stack.http.post(f"{stack.base(instance)}/send-text",
                                       json={"phone": "5511999999999", "message": "after"}).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(sends_again, 15, "the API to accept sends again", interval=0.1)
        recovered = time.monotonic() - back
        assert stack.http.get("/readyz").status_code == 200
        assert recovered < 5, f"the API took {recovered:.1f}s to come back"
        texts = [r["payload"]["message"] for r in stack.all("SELECT payload FROM messages ORDER BY sequence")]
        assert texts[:1] == ["before"] and "during" not in texts  # nothing stored for the 503
        stack.wait_completed([r["zaap_id"] for r in stack.all("SELECT zaap_id FROM messages")], timeout=30)
        print(f"API back {recovered:.2f}s after the database")
    finally:
        stack.stop()
