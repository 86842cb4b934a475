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

FieldKind = Literal["text", "media", "url", "number", "bool", "object", "list", "phone"]


@dataclass(frozen=True)
class Field:
    name: str
    #: text: a non-empty string; media: an http(s) URL, a data: URI or base64; url: http(s);
    #: number: finite;
    #: object: a JSON object, list: a non-empty JSON array (their insides checked by the builder);
    #: phone: a number with its country code, as a contact card needs it.
    kind: FieldKind = "text"
    required: bool = True


@dataclass(frozen=True)
class MessageType:
    #: Stored in `messages.message_type`.
    name: str
    #: The send route under /instances/{id}/token/{token}/ (Z-API's path). A path parameter
    #: (`{extension}`) becomes the payload field of that name.
    route: str
    #: What the contact sees while the message waits out its delayTyping.
    presence: Literal["composing", "recording"]
    fields: tuple[Field, ...]
    #: Other routes of the same type (zedaapi's clients post `send-document` with no extension).
    aliases: tuple[str, ...] = ()


def _optional(name: str, kind: FieldKind = "text") -> Field:
    return Field(name, kind, required=False)


_VIEW_ONCE = _optional("viewOnce", "bool")


TYPES: dict[str, MessageType] = {t.name: t for t in (
    MessageType("text", "send-text", "composing", (Field("message"),)),
    MessageType("image", "send-image", "composing", (Field("image", "media"), _optional("caption"), _VIEW_ONCE)),
    # `ptt` (default true): a voice note, sent as Opus in OGG (converted if need be).
    MessageType("audio", "send-audio", "recording", (Field("audio", "media"), _optional("ptt", "bool"), _VIEW_ONCE)),
    MessageType("video", "send-video", "composing", (Field("video", "media"), _optional("caption"), _VIEW_ONCE)),
    # `send-document` without the extension: taken from `fileName`, the URL or the data: URI's type.
    MessageType("document", "send-document/{extension}", "composing",
                (Field("document", "media"), _optional("extension"), _optional("fileName"), _optional("caption")),
                aliases=("send-document",)),
    MessageType("location", "send-location", "composing",
                (Field("latitude", "number"), Field("longitude", "number"), _optional("title"), _optional("address"))),
    MessageType("contact", "send-contact", "composing",
                (Field("contactName"), Field("contactPhone", "phone"), _optional("contactBusinessDescription"))),
    MessageType("button-list", "send-button-list", "composing", (Field("message"), Field("buttonList", "object"))),
    MessageType("option-list", "send-option-list", "composing", (Field("message"), Field("optionList", "object"))),
    MessageType("sticker", "send-sticker", "composing", (Field("sticker", "media"),)),
    # `poll`: [{"name": …}, …]; `pollMaxOptions`: how many may be chosen (0 or absent: any).
    MessageType("poll", "send-poll", "composing",
                (Field("message"), Field("poll", "list"), _optional("pollMaxOptions", "number"))),
    # `messageId`: the WhatsApp id of the message reacted to; `fromMe`: it was sent by this instance.
    MessageType("reaction", "send-reaction", "composing",
                (Field("reaction"), Field("messageId"), _optional("fromMe", "bool"))),
    MessageType("link", "send-link", "composing",
                (Field("message"), Field("linkUrl", "url"), _optional("title"), _optional("linkDescription"),
                 _optional("image", "media"))),
)}


def presence_for(message_type: str) -> Literal["composing", "recording"]:
    """The presence shown while a message of this type waits its delayTyping."""
    entry = TYPES.get(message_type)
    return entry.presence if entry else "composing"
