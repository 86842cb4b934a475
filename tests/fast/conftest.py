"""The fast tier's fixture: a `Core` on the test's own migrated database (no processes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.core.context import Core
from tests.fast.helpers import make_core


@pytest.fixture
def core(database_url: str) -> Iterator[Core]:
    """No jitter (due times are exact); a one-hour retention for the retention tests."""
    core = make_core(database_url, message_queue_retention_period=3600)
    yield core
    core.pool.close()
