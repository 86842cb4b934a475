"""JSON logs, one object a line, carrying `zaap_id`, `instance_id` and `sequence` when known."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

#: Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON (replacing handlers set by libraries)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Dramatiq logs every skipped message as a warning; a stale dispatch is routine for us.
    logging.getLogger("dramatiq.worker.WorkerThread").setLevel(logging.ERROR)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
