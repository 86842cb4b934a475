"""The message types: one entry each. A new type is an entry here plus its WhatsApp builder
(workers/transports/neonize/messages.py `BUILDERS`, keyed by the same name); the API's route and
body validation, the presence shown while it waits, and the simulator's record follow from it.

Body fields are Z-API's names. Every send route also takes the common fields (`phone`,
`delayMessage`, `delayTyping`, `scheduledFor`: service/api/schemas.py `common`). The payload
stored, shown in the queue and recorded by the simulator is the type's fields as posted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FieldKind = Literal["text", "media", "number", "bool", "object"]


@dataclass(frozen=True)
class Field:
    name: str
    #: text: a non-empty string; media: an http(s) URL, a data: URI or base64; number: finite;
    #: object: a JSON object (checked by the builder).
    kind: FieldKind = "text"
    required: bool = True


@dataclass(frozen=True)
class MessageType:
    #: Stored in `messages.message_type`.
    name: str
    #: The send route under /instances/{id}/token/{token}/ (None: not reachable over HTTP yet).
    route: str | None
    #: What the contact sees while the message waits out its delayTyping.
    presence: Literal["composing", "recording"]
    fields: tuple[Field, ...]


def _optional(name: str, kind: FieldKind = "text") -> Field:
    return Field(name, kind, required=False)


_VIEW_ONCE = _optional("viewOnce", "bool")


TYPES: dict[str, MessageType] = {t.name: t for t in (
    MessageType("text", "send-text", "composing", (Field("message"),)),
    MessageType("image", None, "composing", (Field("image", "media"), _optional("caption"), _VIEW_ONCE)),
    MessageType("audio", None, "recording", (Field("audio", "media"), _optional("ptt", "bool"), _VIEW_ONCE)),
    MessageType("video", None, "composing", (Field("video", "media"), _optional("caption"), _VIEW_ONCE)),
    MessageType("document", None, "composing",
                (Field("document", "media"), _optional("extension"), _optional("fileName"), _optional("caption"))),
    MessageType("location", None, "composing",
                (Field("latitude", "number"), Field("longitude", "number"), _optional("title"), _optional("address"))),
    MessageType("contact", None, "composing",
                (Field("contactName"), Field("contactPhone"), _optional("contactBusinessDescription"))),
    MessageType("button-list", None, "composing", (Field("message"), Field("buttonList", "object"))),
    MessageType("option-list", None, "composing", (Field("message"), Field("optionList", "object"))),
)}


def presence_for(message_type: str) -> Literal["composing", "recording"]:
    """The presence shown while a message of this type waits its delayTyping."""
    entry = TYPES.get(message_type)
    return entry.presence if entry else "composing"
