"""The embedded PostgreSQL (pgserver) that `make run` and the tests start when no
`DATABASE_URL` is given."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def start_embedded_postgres(data_dir: Path) -> Any:
    """Start (or join) the embedded PostgreSQL under `data_dir/pg` and return its handle.

    The server stops when the last process holding a handle exits.
    """
    # platformdirs, which pgserver asks where to keep its socket, warns on every start where
    # XDG_RUNTIME_DIR is unset (containers, ssh sessions): not a problem to print before the banner.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import pgserver

    pgdata = (data_dir / "pg").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    return pgserver.get_server(pgdata, cleanup_mode="stop")
