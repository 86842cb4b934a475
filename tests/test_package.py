"""The package as the container image installs it: a wheel built from the repository carries
the SQL, the templates and the assets, and, installed apart from the source tree, migrates an
empty database and finds its pages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg

from tests.stack import ROOT


def test_a_wheel_carries_the_schema_and_pages_and_migrates_without_the_source_tree(
        tmp_path: Path, empty_database: str) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("whatsapp_message_queue-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "service" / "sql" / "migrations").glob("*.sql"))
    assert {f"service/sql/migrations/{name}" for name in migrations} <= names
    assert {"service/sql/functions/VERSION", "service/sql/functions/40_transitions.sql",
            "service/api/templates/instances.html", "service/api/templates/docs.html",
            "service/api/static/dashboard.js", "service/api/static/dashboard.css"} <= names
    assert not any(name.startswith(("tests/", "bench/", "sql/")) for name in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    check = ("import service, service.db.migrations as db, service.api.templating as t; "
             f"assert service.__file__.startswith({str(site)!r}), service.__file__; "
             "assert (t.ASSETS / 'dashboard.js').exists() and t.TEMPLATES.get_template('docs.html'); "
             f"print(','.join(db.migrate({empty_database!r})))")
    env = {**os.environ, "PYTHONPATH": str(site)}
    ran = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr
    applied = ran.stdout.strip().split(",")
    assert migrations == [a for a in applied if a[0].isdigit()]
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT to_regproc('wmq_claim') IS NOT NULL").fetchone() == (True,)
