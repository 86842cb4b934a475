"""Build the WhatsApp protobuf `Message` for each message type from the payload stored with it.

The types and their fields (Z-API's names) are the table in service/core/message_types.py;
`BUILDERS` has one entry per type there (tests/whatsapp_checks.py checks both name the same
types). Media fields are an http(s) URL, a `data:` URI or base64. Media is uploaded through the
`upload` callable (the client's, in production; a stand-in in tests: it is the network edge).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from typing import Any

from neonize.proto.Neonize_pb2 import UploadResponse
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AudioMessage,
    ButtonsMessage,
    ContactMessage,
    DocumentMessage,
    ImageMessage,
    ListMessage,
    LocationMessage,
    Message,
    VideoMessage,
)
from neonize.utils import gen_vcard
from neonize.utils.enum import MediaType

from workers.transports.base import PermanentSendError
from workers.transports.neonize.media import Media, fetch_media

Upload = Callable[[bytes, MediaType], UploadResponse]
Fetch = Callable[[str], Media]

DEFAULT_MIMETYPES = {
    "image": "image/jpeg",
    "audio": "audio/ogg; codecs=opus",
    "video": "video/mp4",
    "document": "application/octet-stream",
}


def _required(payload: dict[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value in (None, ""):
        raise PermanentSendError(f"{name} is missing")
    return value


def _sniff(media: Media, kind: str, extension: str | None = None) -> str:
    if media.mimetype and media.mimetype != "application/octet-stream":
        return media.mimetype
    if extension:
        guessed = mimetypes.guess_type(f"file.{extension}")[0]
        if guessed:
            return guessed
    try:
        import magic

        sniffed = str(magic.from_buffer(media.data, mime=True))
        if sniffed and sniffed != "application/octet-stream":
            return sniffed
    except Exception:
        pass
    return DEFAULT_MIMETYPES[kind]


def _uploaded(upload: UploadResponse) -> dict[str, Any]:
    """The fields every media message copies from the upload."""
    return {
        "URL": upload.url,
        "directPath": upload.DirectPath,
        "mediaKey": upload.MediaKey,
        "fileEncSHA256": upload.FileEncSHA256,
        "fileSHA256": upload.FileSHA256,
        "fileLength": upload.FileLength,
    }


def build_message(message_type: str, payload: dict[str, Any], upload: Upload, fetch: Fetch = fetch_media) -> Message:
    builder = BUILDERS.get(message_type)
    if builder is None:
        raise PermanentSendError(f"unsupported message type: {message_type}")
    return builder(payload, upload, fetch)


def text(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    return Message(conversation=_required(payload, "message"))


def _media(kind: str, media_type: MediaType, payload: dict[str, Any], upload: Upload, fetch: Fetch
           ) -> dict[str, Any]:
    """The fields an image, audio or video message shares: the upload, mimetype, view-once."""
    media = fetch(_required(payload, kind))
    return {"mimetype": _sniff(media, kind), "viewOnce": bool(payload.get("viewOnce", False)),
            **_uploaded(upload(media.data, media_type))}


def image(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    fields = _media("image", MediaType.MediaImage, payload, upload, fetch)
    return Message(imageMessage=ImageMessage(caption=payload.get("caption"), **fields))


def audio(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    fields = _media("audio", MediaType.MediaAudio, payload, upload, fetch)
    return Message(audioMessage=AudioMessage(PTT=bool(payload.get("ptt", True)), **fields))


def video(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    fields = _media("video", MediaType.MediaVideo, payload, upload, fetch)
    return Message(videoMessage=VideoMessage(caption=payload.get("caption"), **fields))


def document(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    media = fetch(_required(payload, "document"))
    extension = payload.get("extension")
    file_name = payload.get("fileName") or (f"document.{extension}" if extension else "document")
    if extension and not file_name.endswith(f".{extension}"):
        file_name = f"{file_name}.{extension}"
    return Message(documentMessage=DocumentMessage(
        mimetype=_sniff(media, "document", extension), fileName=file_name, title=file_name,
        caption=payload.get("caption"),
        **_uploaded(upload(media.data, MediaType.MediaDocument)),
    ))


def location(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    return Message(locationMessage=LocationMessage(
        degreesLatitude=float(_required(payload, "latitude")),
        degreesLongitude=float(_required(payload, "longitude")),
        name=payload.get("title"), address=payload.get("address"),
    ))


def contact(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    name = _required(payload, "contactName")
    digits = "".join(ch for ch in str(_required(payload, "contactPhone")) if ch.isdigit())
    if not digits:
        raise PermanentSendError("contactPhone has no digits")
    return Message(contactMessage=ContactMessage(displayName=name, vcard=gen_vcard(name, digits)))


def button_list(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    spec = _required(payload, "buttonList")
    buttons = [
        ButtonsMessage.Button(
            buttonID=str(button.get("id") or n + 1),
            buttonText=ButtonsMessage.Button.ButtonText(displayText=button["label"]),
            type=ButtonsMessage.Button.Type.RESPONSE,
        )
        for n, button in enumerate(spec.get("buttons") or [])
    ]
    if not buttons:
        raise PermanentSendError("buttonList.buttons is empty")
    return Message(buttonsMessage=ButtonsMessage(
        contentText=_required(payload, "message"), footerText=spec.get("footer"),
        headerType=ButtonsMessage.HeaderType.EMPTY, buttons=buttons,
    ))


def option_list(payload: dict[str, Any], upload: Upload, fetch: Fetch) -> Message:
    spec = _required(payload, "optionList")
    rows = [
        ListMessage.Row(rowID=str(option.get("id") or n + 1), title=option["title"],
                        description=option.get("description"))
        for n, option in enumerate(spec.get("options") or [])
    ]
    if not rows:
        raise PermanentSendError("optionList.options is empty")
    return Message(listMessage=ListMessage(
        title=spec.get("title"), description=_required(payload, "message"),
        buttonText=spec.get("buttonLabel") or "Options",
        listType=ListMessage.ListType.SINGLE_SELECT,
        sections=[ListMessage.Section(title=spec.get("title"), rows=rows)],
    ))


BUILDERS: dict[str, Callable[[dict[str, Any], Upload, Fetch], Message]] = {
    "text": text,
    "image": image,
    "audio": audio,
    "video": video,
    "document": document,
    "location": location,
    "contact": contact,
    "button-list": button_list,
    "option-list": option_list,
}
