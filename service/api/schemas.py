"""Request validation: turn a JSON body into a core request, or say which field is wrong.

Delays are seconds, as in Z-API (fractions allowed); `delayMessage` has no upper limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import mimetypes
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from service import outbound
from service.core.message_types import Field, MessageType
from service.core.models import PENDING_STATUSES, MessageRequest

#: delayTyping is a presence shown before one message: minutes at most make sense.
MAX_DELAY_TYPING_SECONDS = 600
#: delayMessage has no practical limit: days, months, years (timestamps must stay representable).
MAX_DELAY_MESSAGE_SECONDS = 10 * 365 * 86400
MAX_TEXT_LENGTH = 65_536
#: JSON bodies nest no deeper than this (the content model needs three levels).
MAX_JSON_DEPTH = 16

_PHONE = re.compile(r"^\+?[0-9]{10,15}$", re.ASCII)
_JID = re.compile(r"^[\w.\-:]+@(s\.whatsapp\.net|g\.us|lid|newsletter|broadcast)$", re.ASCII)
_GROUP = re.compile(r"^[0-9][0-9\-]{8,40}-group$", re.ASCII)


class ValidationError(Exception):
    """Bad input: `field` names the culprit, the message says what is wrong with it."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise ValidationError("body", "request body is empty; send a JSON object")
    try:
        data = json.loads(raw, parse_constant=_NonFinite)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValidationError("body", f"request body is not valid JSON: {error}") from None
    except RecursionError:
        raise ValidationError("body", "request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValidationError("body", "request body must be a JSON object")
    _check_storable(data, "body", 0)
    return data


class _NonFinite:
    """`NaN`, `Infinity` or `-Infinity` where a value was: Python's json reads them, JSON and
    PostgreSQL do not. Kept as a marker until the walk below names the field it is in."""

    def __init__(self, name: str) -> None:
        self.name = name


def _check_storable(value: Any, where: str, depth: int) -> None:
    """PostgreSQL cannot store NUL characters or unpaired surrogates; refuse them by name."""
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(where, f"{where} is nested too deeply")
    if isinstance(value, _NonFinite):
        raise ValidationError(where, f"{where} must be a finite number: JSON has no {value.name}")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(where, f"{where} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(where, f"{where} contains an invalid (unpaired surrogate) character") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, where, depth + 1)
            _check_storable(item, key if where == "body" else f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_storable(item, f"{where}[{n}]", depth + 1)


def phone(data: dict[str, Any]) -> str:
    value = data.get("phone")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("phone", "phone is required: digits with country code, e.g. 5511999999999")
    value = re.sub(r"[\s()\-]", "", value) if not value.endswith("-group") else value.strip()
    if _PHONE.match(value):
        return value.lstrip("+")
    if _JID.match(value) or _GROUP.match(value):
        return value
    raise ValidationError("phone", "phone must be 10 to 15 digits with country code (e.g. 5511999999999; "
                                   "+, spaces, dashes and brackets are ignored) or a WhatsApp id (…@s.whatsapp.net, "
                                   "…@g.us)")


def non_empty_text(data: dict[str, Any], name: str, max_length: int = MAX_TEXT_LENGTH) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(name, f"{name} is required and must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(name, f"{name} is longer than {max_length} characters")
    return value


def seconds_to_ms(data: dict[str, Any], name: str, maximum: float | None = None) -> int:
    value = data.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(name, f"{name} must be a number of seconds")
    if value < 0:
        raise ValidationError(name, f"{name} cannot be negative")
    if maximum is not None and value > maximum:
        raise ValidationError(name, f"{name} cannot exceed {maximum:.0f} seconds")
    return round(value * 1000)


def scheduled_for(data: dict[str, Any]) -> datetime | None:
    """Optional absolute send time: ISO 8601 with a time zone, or epoch milliseconds."""
    value = data.get("scheduledFor")
    if value is None:
        return None
    parsed: datetime | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        try:
            parsed = datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValidationError("scheduledFor", "scheduledFor is out of range") from None
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            parsed = None
    if parsed is not None:
        if parsed > datetime.now(UTC) + timedelta(seconds=MAX_DELAY_MESSAGE_SECONDS):
            raise ValidationError("scheduledFor", "scheduledFor is more than 10 years away")
        return parsed
    raise ValidationError(
        "scheduledFor", "scheduledFor must be ISO 8601 with a time zone or epoch milliseconds"
    )


def common(data: dict[str, Any]) -> dict[str, Any]:
    """The fields every send route shares."""
    return {
        "phone": phone(data),
        "delay_message_ms": seconds_to_ms(data, "delayMessage", MAX_DELAY_MESSAGE_SECONDS),
        "delay_typing_ms": seconds_to_ms(data, "delayTyping", MAX_DELAY_TYPING_SECONDS),
        "scheduled_for": scheduled_for(data),
    }


def message(message_type: MessageType, data: dict[str, Any]) -> MessageRequest:
    """A send route's body as a core request: the common fields and the type's own (a body in
    another client's shape first put in Z-API's: `SHAPES`)."""
    reshape = SHAPES.get(message_type.name)
    if reshape is not None:
        data = reshape(data)
    fields = common(data)
    payload = {f.name: content_field(data, f) for f in message_type.fields if data.get(f.name) is not None
               or f.required}
    # `messageId` on any other type: the WhatsApp id of the message this one replies to (Z-API's
    # reply); a reaction's own `messageId` is the message it reacts to.
    if "messageId" not in payload and data.get("messageId") is not None:
        payload["messageId"] = non_empty_text(data, "messageId", max_length=200)
    if "messageId" in payload:
        payload.update(quoted_author(data))
    return MessageRequest(message_type=message_type.name, payload=payload, **fields)


def quoted_author(data: dict[str, Any]) -> dict[str, Any]:
    """Who wrote the message `messageId` names, for a reply's quote or a reaction's key: `fromMe`
    (this instance sent it) or `participant` (its sender's number; needed in a group)."""
    author: dict[str, Any] = {}
    if data.get("fromMe") is not None:
        if not isinstance(data["fromMe"], bool):
            raise ValidationError("fromMe", "fromMe must be true or false")
        author["fromMe"] = data["fromMe"]
    if data.get("participant") is not None:
        author["participant"] = non_empty_text(data, "participant", max_length=100)
    return author


def content_field(data: dict[str, Any], spec: Field) -> Any:
    """One content field, checked by its kind (message_types.Field)."""
    name, value = spec.name, data.get(spec.name)
    if spec.kind == "text":
        return non_empty_text(data, name)
    if spec.kind == "media":
        return media(data, name)
    if spec.kind == "url":
        return url(data, name)
    if spec.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValidationError(name, f"{name} must be a number")
        return value
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise ValidationError(name, f"{name} must be true or false")
        return value
    if spec.kind == "phone":
        return international_phone(data, name)
    if spec.kind == "list":
        if not isinstance(value, list) or not value:
            raise ValidationError(name, f"{name} must be a non-empty JSON array")
        return value
    if not isinstance(value, dict):
        raise ValidationError(name, f"{name} must be a JSON object")
    return value


#: Media given inline (base64 or a data: URI) up to this many characters (about 12 MB of file);
#: larger files go by URL, which the worker fetches at send time.
MAX_INLINE_MEDIA = 16 * 1024 * 1024
_DATA_URI = re.compile(r"^data:[\w.+\-]+/[\w.+\-]+(?:;[^,]*)?;base64,")
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")


def idempotency_key(headers: Any) -> str | None:
    """The `Idempotency-Key` header: 1 to 255 visible ASCII characters, or absent."""
    value = headers.get("idempotency-key")
    if value is None:
        return None
    if not re.fullmatch(r"[\x21-\x7e]{1,255}", value):
        raise ValidationError("Idempotency-Key", "Idempotency-Key must be 1 to 255 visible ASCII characters")
    return str(value)


def path_fields(params: dict[str, Any]) -> dict[str, str]:
    """A send route's own path parameters (`{extension}`): short words, as file extensions are."""
    fields = {k: str(v) for k, v in params.items() if k not in ("instance", "token")}
    for name, value in fields.items():
        if not re.fullmatch(r"[A-Za-z0-9]{1,16}", value):
            raise ValidationError(name, f"{name} must be 1 to 16 letters or digits")
    return fields


def url(data: dict[str, Any], name: str) -> str:
    """A URL the service will fetch or post to for the customer: https (plain http only where the
    operator allows it), and no literal address outside the public internet (names are checked
    again, resolved, when the worker connects: service/outbound.py)."""
    value = non_empty_text(data, name, max_length=2048).strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(name, f"{name} must be an http(s) URL")
    refusal = outbound.policy().refusal(value)
    if refusal is not None:
        raise ValidationError(name, f"{name}: {refusal}")
    return value


def media(data: dict[str, Any], name: str) -> str:
    """An http(s) URL (fetched by the worker when the message goes), a data: URI or base64."""
    value = non_empty_text(data, name, max_length=MAX_INLINE_MEDIA)
    if value.startswith(("http://", "https://")):
        return url(data, name)
    encoded = value[_DATA_URI.match(value).end():] if _DATA_URI.match(value) else value
    # Whitespace counted, not stripped: one re.sub over 16 MiB holds the GIL for ~65 ms.
    if not _BASE64.match(encoded) or (len(encoded) - sum(map(encoded.count, " \t\r\n\f\v"))) % 4:
        raise ValidationError(name, f"{name} must be an http(s) URL, a data: URI or base64 data")
    return value


def international_phone(data: dict[str, Any], name: str) -> str:
    """A phone number with its country code (`+55 11 98888-7777`, `5511988887777`): a contact
    card WhatsApp can show. Refused here, not at send time, when it cannot be read as one."""
    import phonenumbers

    value = non_empty_text(data, name, max_length=40)
    digits = "".join(ch for ch in value if ch.isdigit())
    try:
        parsed = phonenumbers.parse(f"+{digits}")
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_possible_number(parsed):
        raise ValidationError(name, f"{name} must be a phone number with its country code, such as 5511988887777")
    return value


def optional_text(data: dict[str, Any], name: str, max_length: int = 200) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise ValidationError(name, f"{name} must be a string of at most {max_length} characters")
    return value


#: What `GET queue?status=` accepts: `pending` (the default: what is still to send, as Z-API's
#: queue), `all` (every message still retained), or one status as the queue shows it.
QUEUE_FILTERS = ("pending", "all", *PENDING_STATUSES, "completed", "cancelled", "discarded")


def queue_filter(params: Any) -> str | None:
    """The status to list (None: all of them)."""
    status = params.get("status", "pending")
    if status not in QUEUE_FILTERS:
        raise ValidationError("status", f"status must be one of {', '.join(QUEUE_FILTERS)}")
    return None if status == "all" else str(status)


def cursor_page(data: dict[str, Any]) -> tuple[int, int]:
    """Z-API's cursor paging (`POST queue`): `pageSize` (1–500, default 20) and the opaque
    `pagingState` of the previous answer, as (size, the sequence to list after)."""
    size = data.get("pageSize", 20)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 500:
        raise ValidationError("pageSize", "pageSize must be an integer between 1 and 500")
    state = data.get("pagingState")
    if state is None or state == "":
        return size, 0
    try:
        after = int(base64.urlsafe_b64decode(str(state).encode("ascii")).decode("ascii").removeprefix("after:"))
    except (ValueError, UnicodeError, binascii.Error):
        raise ValidationError("pagingState", "pagingState must be the value a previous answer gave") from None
    if not 0 <= after < 2**63:
        raise ValidationError("pagingState", "pagingState must be the value a previous answer gave")
    return size, after


def paging_state(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"after:{sequence}".encode()).decode()


def page(params: Any) -> tuple[int, int]:
    """`limit` (1–500, default 50) and `offset` (≥ 0) from a query string; or Z-API's `page`
    (from 1) and `pageSize` (1–500)."""
    if "page" in params or "pageSize" in params:
        try:
            number, size = int(params.get("page", 1)), int(params.get("pageSize", 50))
        except ValueError:
            raise ValidationError("page", "page and pageSize must be integers") from None
        if not 1 <= size <= 500:
            raise ValidationError("pageSize", "pageSize must be between 1 and 500")
        if not 1 <= number <= 1_000_000:
            raise ValidationError("page", "page must be between 1 and 1000000")
        return size, (number - 1) * size
    try:
        limit = int(params.get("limit", 50))
        offset = int(params.get("offset", 0))
    except ValueError:
        raise ValidationError("limit", "limit and offset must be integers") from None
    if not 1 <= limit <= 500:
        raise ValidationError("limit", "limit must be between 1 and 500")
    if not 0 <= offset <= 1_000_000_000:
        raise ValidationError("offset", "offset must be between 0 and 1000000000")
    return limit, offset


# --- other clients' shapes of the same messages ---------------------------------------------------


def _zedaapi_buttons(data: dict[str, Any]) -> dict[str, Any]:
    """zedaapi's `send-button-list`: top-level `buttons: [{id, title}]`, `title`, `footer`, as
    Z-API's `buttonList: {buttons: [{id, label}], title, footer}`."""
    if "buttonList" in data or "buttons" not in data:
        return data
    buttons = data["buttons"]
    if not isinstance(buttons, list) or not buttons:
        raise ValidationError("buttons", "buttons must be a non-empty JSON array of {id, title}")
    converted = []
    for n, button in enumerate(buttons):
        where = f"buttons[{n}]"
        if not isinstance(button, dict):
            raise ValidationError(where, f"{where} must be a JSON object with id and title")
        label = non_empty_text(button, "title", max_length=1024) if "title" in button else None
        if label is None:
            raise ValidationError(f"{where}.title", f"{where}.title is required")
        converted.append({"id": str(button.get("id") or n + 1), "label": label})
    extras = {name: optional_text(data, name, max_length=1024) for name in ("title", "footer")}
    rest = {k: v for k, v in data.items() if k not in ("buttons", "title", "footer")}
    return {**rest, "buttonList": {"buttons": converted, **{k: v for k, v in extras.items() if v is not None}}}


def _zedaapi_sections(data: dict[str, Any]) -> dict[str, Any]:
    """zedaapi's `send-option-list`: `sections: [{title, rows: [{id, title, description}]}]`,
    `buttonLabel`, `title`, `footer`, as Z-API's `optionList`: every row, in order, in `options`
    (the sections kept beside them, as given)."""
    if "optionList" in data or "sections" not in data:
        return data
    sections = data["sections"]
    if not isinstance(sections, list) or not sections:
        raise ValidationError("sections", "sections must be a non-empty JSON array of {title, rows}")
    options, kept = [], []
    for s_n, section in enumerate(sections):
        where = f"sections[{s_n}]"
        if not isinstance(section, dict):
            raise ValidationError(where, f"{where} must be a JSON object with title and rows")
        rows = section.get("rows")
        if not isinstance(rows, list) or not rows:
            raise ValidationError(f"{where}.rows", f"{where}.rows must be a non-empty JSON array")
        section_rows = []
        for r_n, row in enumerate(rows):
            row_where = f"{where}.rows[{r_n}]"
            if not isinstance(row, dict) or not isinstance(row.get("title"), str) or not row["title"].strip():
                raise ValidationError(f"{row_where}.title", f"{row_where}.title is required")
            option = {"id": str(row.get("id") or len(options) + 1), "title": row["title"]}
            description = optional_text(row, "description", max_length=1024)
            if description is not None:
                option["description"] = description
            options.append(option)
            section_rows.append(option)
        kept.append({"title": optional_text(section, "title", max_length=1024) or "", "rows": section_rows})
    spec: dict[str, Any] = {"options": options, "sections": kept}
    for name in ("title", "buttonLabel", "footer"):
        value = optional_text(data, name, max_length=1024)
        if value is not None:
            spec[name] = value
    rest = {k: v for k, v in data.items() if k not in ("sections", "title", "buttonLabel", "footer")}
    return {**rest, "optionList": spec}


def _document_extension(data: dict[str, Any]) -> dict[str, Any]:
    """`send-document` without `/{extension}` (zedaapi's): the extension from `fileName`, the
    URL's path or the data: URI's type."""
    if data.get("extension") is not None:
        return data
    document = data.get("document")
    names = [data.get("fileName"), urlsplit(document).path if _is_url(document) else None]
    for name in names:
        if isinstance(name, str) and (extension := _extension_of(name)):
            return {**data, "extension": extension}
    if isinstance(document, str) and document.startswith("data:") and ";" in document[:200]:
        guessed = mimetypes.guess_extension(document[5:document.index(";")].lower())
        if guessed:
            return {**data, "extension": guessed.lstrip(".")}
    raise ValidationError("extension", "send-document needs the file's extension: in the path "
                                       "(send-document/pdf), in fileName (invoice.pdf) or in the URL")


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _extension_of(name: str) -> str | None:
    """`invoice.PDF` → `pdf`; None without a plausible extension."""
    last = name.rsplit("/", 1)[-1]
    extension = last.rpartition(".")[2] if "." in last else ""
    return extension.lower() if re.fullmatch(r"[A-Za-z0-9]{1,16}", extension) else None


#: A message type's other accepted shapes, put in Z-API's before the checks.
SHAPES = {"button-list": _zedaapi_buttons, "option-list": _zedaapi_sections, "document": _document_extension}
