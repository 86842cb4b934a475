"""The HTML pages' templates (service/api/templates: the dashboard and /docs) and the filters
they format times with. Their CSS and JavaScript are in service/api/static, served at /assets."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from starlette.templating import Jinja2Templates

HERE = Path(__file__).parent
ASSETS = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


def ago(value: datetime | float | Decimal | None) -> str:
    """A duration as people read it: `4s`, `3m 20s`, `2h 5m`, `3d 4h`."""
    if value is None:
        return "—"
    elapsed = (datetime.now(UTC) - value).total_seconds() if isinstance(value, datetime) else float(value)
    seconds = max(0, int(elapsed))
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            rest = (seconds % size) // sub_size
            return f"{seconds // size}{unit}" + (f" {rest}{sub}" if rest else "")
    return f"{seconds}s"


def at(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def until(value: datetime | None) -> str:
    """How far a due time is: `in 3m` or `2m ago`."""
    if value is None:
        return "—"
    seconds = (value - datetime.now(UTC)).total_seconds()
    return f"in {ago(seconds)}" if seconds > 0 else f"{ago(-seconds)} ago"


#: The first words of a message's text, or what its content is, as a row shows it.
PREVIEW_CHARACTERS = 48
#: Per type, the payload fields that say what a message is, the first present one shown.
_PREVIEW_FIELDS = {"location": ("title", "address"), "contact": ("contactName",), "reaction": ("reaction",),
                   "document": ("fileName", "caption"), "link": ("message", "linkUrl")}


def preview(message_type: str, payload: dict[str, Any] | None) -> str:
    """`Olá, seu pedido 42 saiu para entrega…`, `image: a pixel`, `document: invoice.pdf`: a short
    line (Jinja escapes it) where an operator looks for what the message says."""
    payload = payload or {}
    fields = _PREVIEW_FIELDS.get(message_type, ("message", "caption"))
    text = next((str(payload[f]) for f in fields if isinstance(payload.get(f), str) and payload[f].strip()), "")
    text = " ".join(text.split())
    if len(text) > PREVIEW_CHARACTERS:
        text = text[:PREVIEW_CHARACTERS - 1].rstrip() + "…"
    return text if message_type in ("text", "link", "button-list", "option-list", "poll") and text else \
        f"{message_type}: {text}" if text else message_type


TEMPLATES.env.filters.update(ago=ago, at=at, until=until, urldecode=unquote)
TEMPLATES.env.globals.update(preview=preview)
