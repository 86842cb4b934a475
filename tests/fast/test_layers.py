"""Arrows go one way: API → core ← workers. The core knows no HTTP, actor or transport; the
transports know no queue; the API imports no worker code (the composition roots, service/cli.py
and workers/main.py, wire them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

RULES = {
    "service/core": ("workers", "service.api", "starlette", "dramatiq", "dramatiq_postgres", "neonize"),
    "service/api": ("workers", "dramatiq", "dramatiq_postgres", "neonize"),
    "workers/transports": ("service.core", "service.api", "workers.broker", "workers.actors", "workers.ordering",
                           "workers.maintenance", "dramatiq", "dramatiq_postgres"),
}


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_a_layer_imports_nothing_it_must_not_know(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    broken = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in imported_modules(path)
        if any(module == banned or module.startswith(banned + ".") for banned in RULES[package])
    }
    assert not broken, sorted(broken)


def test_no_core_sql_names_a_transport() -> None:
    """Routing is data (the `transports` table): the core's SQL and statements name no transport."""
    core_sql = [*sorted((ROOT / "service" / "sql" / "functions").glob("*.sql")),
                ROOT / "service" / "core" / "queries.py"]
    for path in core_sql:
        text = path.read_text()
        for name in ("'neonize'", "'simulator'", "simulator_", "whatsmeow"):
            assert name not in text, f"{path.relative_to(ROOT)} names {name}"


def test_every_core_error_says_its_kind_and_subject() -> None:
    """The API maps both in one table (service/api/errors.py); a core error that said neither
    would otherwise get a guessed status."""
    from typing import get_args

    from service.api.errors import FIELD_OF_SUBJECT, STATUS_OF_KIND
    from service.core import errors

    found = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.CoreError)
             and c is not errors.CoreError]
    assert len(found) >= 6
    for error in found:
        assert error.kind in STATUS_OF_KIND and error.subject in FIELD_OF_SUBJECT, error
    assert set(STATUS_OF_KIND) == set(get_args(errors.Kind)) and set(FIELD_OF_SUBJECT) == set(get_args(errors.Subject))
