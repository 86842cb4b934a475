"""Build the WhatsApp protobuf `Message` for each message type from the payload stored with it.

The types and their fields (Z-API's names) are the table in service/core/message_types.py;
`BUILDERS` has one entry per type there (tests/whatsapp_checks.py checks both name the same
types). Media fields are an http(s) URL, a `data:` URI or base64. Media is uploaded through
`Build.upload` (the client's, in production; a stand-in in tests: it is the network edge).

What WhatsApp accepts, as built here:
- a voice note (`ptt`) only as Opus in OGG, with its duration: other audio is converted with
  ffmpeg where installed, or else sent as a plain audio file;
- buttons and option lists as native-flow interactive messages (what renders on ordinary
  accounts; neonize adds the `biz_bot` node they need in one-to-one chats, its default), built
  with neonize's own `ButtonMessage`;
- polls and reactions as whatsmeow's `BuildPollCreation` and `BuildReaction` make them (those
  are Go calls on a live client, so the same protobuf is built here);
- images with their size and a JPEG thumbnail, videos with duration and thumbnail where ffmpeg
  is installed, stickers as 512 × 512 WebP, links with their preview fields.
"""

from __future__ import annotations

import mimetypes
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neonize.proto.Neonize_pb2 import UploadResponse
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AudioMessage,
    ContactMessage,
    ContextInfo,
    DocumentMessage,
    ExtendedTextMessage,
    FutureProofMessage,
    ImageMessage,
    LocationMessage,
    Message,
    MessageContextInfo,
    PollCreationMessage,
    ReactionMessage,
    StickerMessage,
    VideoMessage,
)
from neonize.utils.enum import MediaType

from workers.transports.base import PermanentSendError, TransportError
from workers.transports.neonize import mediainfo
from workers.transports.neonize.media import BUDGET, Media, fetch_media

Upload = Callable[[bytes, MediaType], UploadResponse]
Fetch = Callable[[str], Media]
#: A message this instance sent, by its WhatsApp id (the transport remembers them), or None.
Sent = Callable[[str], "Message | None"]

DEFAULT_MIMETYPES = {
    "image": "image/jpeg",
    "audio": "audio/mpeg",
    "video": "video/mp4",
    "document": "application/octet-stream",
}
VOICE_MIMETYPE = "audio/ogg; codecs=opus"


@dataclass(frozen=True)
class Build:
    """What a builder may use besides the payload: the upload, the media fetch, the chat."""

    upload: Upload
    fetch: Fetch = fetch_media
    #: The recipient's address (`user@s.whatsapp.net`, `…@g.us`): a reaction names its chat.
    to: str = ""
    #: The account's own address (`user@s.whatsapp.net`): the author of what it sent.
    own: str = ""
    #: What this instance sent, by WhatsApp id: a reply quotes it, a reaction knows it is ours.
    sent: Sent = lambda _id: None
    notes: list[str] = field(default_factory=list)


def _required(payload: dict[str, Any], name: str) -> Any:
    value = payload.get(name)
    if value in (None, "", [], {}):
        raise PermanentSendError(f"{name} is missing")
    return value


#: Content types that say nothing of what the bytes are (S3 answers `binary/octet-stream`).
GENERIC_MIMETYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/binary",
                               "application/unknown", "application/x-unknown", "unknown/unknown"})


def _fits(mimetype: str, kind: str) -> bool:
    """A type that says something, and something a `kind` message may be (any type for a document)."""
    base = mimetype.split(";")[0].strip().lower()
    return base not in GENERIC_MIMETYPES and (kind == "document" or base.startswith(f"{kind}/"))


def _from_bytes(data: bytes, kind: str) -> str | None:
    """The type the bytes are, by libmagic, else (an image) by Pillow; None if neither can tell."""
    try:
        import magic

        sniffed = str(magic.from_buffer(data, mime=True))
        if _fits(sniffed, kind):
            return sniffed
    except Exception:
        pass
    if kind == "image":
        try:
            import io

            from PIL import Image

            with Image.open(io.BytesIO(data)) as opened:
                return Image.MIME.get(opened.format or "")
        except Exception:
            pass
    return None


def _sniff(media: Media, kind: str, extension: str | None = None) -> str:
    """The media's type as WhatsApp is to be told it: the server's (or data URI's) when it names
    a type of this kind; else (none, a generic `application/octet-stream` or S3's
    `binary/octet-stream`, or a type of another kind) a document's extension, then what the bytes
    are; else the kind's default."""
    if media.mimetype and _fits(media.mimetype, kind):
        return media.mimetype
    if extension:
        guessed = mimetypes.guess_type(f"file.{extension}")[0]
        if guessed and _fits(guessed, kind):
            return guessed
    return _from_bytes(media.data, kind) or DEFAULT_MIMETYPES[kind]


#: whatsmeow's Upload: "upload failed with status code 413" (the media server's Payload Too
#: Large); other clients' words for the same refusal.
_TOO_LARGE = re.compile(r"status code 413\b|\b413 (request entity|payload) too large|file too large"
                        r"|too large to upload", re.IGNORECASE)


def _upload(build: Build, data: bytes, kind: MediaType) -> UploadResponse:
    """`build.upload`, with a refusal for size a permanent error saying so: the same bytes are
    refused again however often they are tried. Other failures pass on (transport.py maps them)."""
    try:
        return build.upload(data, kind)
    except TransportError:
        raise
    except Exception as error:
        if _TOO_LARGE.search(str(error)):
            raise PermanentSendError(f"WhatsApp refused the upload as too large ({len(data)} bytes): "
                                     f"{type(error).__name__}: {error}") from None
        raise


def _view_once(inner: Message, payload: dict[str, Any]) -> Message:
    """Media to be seen once as WhatsApp sends it: the message (its `viewOnce` flag set) inside a
    `viewOnceMessage` wrapper, as Baileys' generateWAMessageContent builds it."""
    if not payload.get("viewOnce"):
        return inner
    return Message(viewOnceMessage=FutureProofMessage(message=inner))


def _animated_webp(webp: bytes) -> bool:
    """An animated WebP: the extended format (VP8X) with its animation flag."""
    return (webp[:4] == b"RIFF" and webp[8:12] == b"WEBP" and webp[12:16] == b"VP8X" and len(webp) > 20
            and bool(webp[20] & 0x02))


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


def build_message(message_type: str, payload: dict[str, Any], upload: Upload, fetch: Fetch = fetch_media,
                  to: str = "", own: str = "", sent: Sent = lambda _id: None) -> Message:
    """The message to send. Media is fetched and uploaded within this worker's media budget
    (media.BUDGET), held until the upload is done."""
    builder = BUILDERS.get(message_type)
    if builder is None:
        raise PermanentSendError(f"unsupported message type: {message_type}")
    reply = bool(payload.get("messageId")) and message_type != "reaction"
    with BUDGET.claim() as claim:
        build = Build(upload, claim.fetch(fetch), to, own, sent)
        quote = quoted(payload, build) if reply else None  # refused before any media is fetched
        message = builder(payload, build)
    return reply_to(message, quote) if quote else message


@dataclass(frozen=True)
class Quoted:
    """The message a reply quotes or a reaction reacts to, as far as it is known."""

    id: str
    from_me: bool
    #: Who wrote it (`user@s.whatsapp.net`), "" if unknown.
    author: str
    #: Its content, when this instance sent it.
    content: Message | None


def _user_jid(value: str) -> str:
    """A phone number or an address → the user's address without a device part."""
    user, _, server = value.strip().partition("@")
    user = user.split(":")[0]
    if not server:
        user, server = "".join(ch for ch in user if ch.isdigit()), "s.whatsapp.net"
    return f"{user}@{server}" if user else ""


def _group(chat: str) -> bool:
    return chat.endswith("@g.us")


def quoted(payload: dict[str, Any], build: Build) -> Quoted:
    """Who wrote the message `messageId` names, and what it said if known: ours when this
    instance sent it (remembered) or `fromMe` says so; else `participant` if given, else, in a
    one-to-one chat, the contact. In a group the author of a contact's message cannot be told
    otherwise: without `participant` the quote names no author (phones find the quoted message by
    its id in their own copy; a reaction may not attach), as Z-API's own API lets a client send it."""
    message_id = str(_required(payload, "messageId"))
    content = build.sent(message_id)
    if content is not None or payload.get("fromMe"):
        return Quoted(message_id, True, build.own, content)
    author = _user_jid(str(payload.get("participant") or ""))
    if not author and not _group(build.to):
        author = _user_jid(build.to) if build.to else ""
    return Quoted(message_id, False, author, None)


def reply_to(message: Message, quote: Quoted) -> Message:
    """The message as a reply (WhatsApp's quote): the quoted message's id, its author and its
    content (when known; else an empty text, which phones fill in from their own copy) in the
    context info of the message's content (plain text becomes an extended text, which has one)."""
    if message.HasField("conversation"):
        message = Message(extendedTextMessage=ExtendedTextMessage(text=message.conversation))
    context = ContextInfo(stanzaID=quote.id, quotedMessage=quote.content or Message(conversation=""))
    if quote.author:
        context.participant = quote.author
    content = _content(message)
    if content is None:
        raise PermanentSendError("this message cannot be sent as a reply")
    content.contextInfo.MergeFrom(context)
    return message


def retarget(message: Message, old: str, new: str) -> Message:
    """The built message sent to another form of the number (numbers.py): a reaction's chat and
    a reply's author that named the old form name the new one; nothing is built or uploaded anew."""
    moved = Message()
    moved.CopyFrom(message)
    if moved.HasField("reactionMessage") and moved.reactionMessage.key.remoteJID == old:
        moved.reactionMessage.key.remoteJID = new
    content = _content(moved)
    if content is not None and content.HasField("contextInfo") and content.contextInfo.participant == old:
        content.contextInfo.participant = new
    return moved


def quotable(message: Message) -> Message:
    """What a later reply quotes of a message sent: its content without its own quote and
    without thumbnails (kept small: the transport remembers thousands)."""
    copy = Message()
    copy.CopyFrom(message)
    if copy.HasField("extendedTextMessage") and not copy.extendedTextMessage.matchedText:
        return Message(conversation=copy.extendedTextMessage.text)
    content = _content(copy)
    if content is not None:
        content.ClearField("contextInfo")
        if "JPEGThumbnail" in content.DESCRIPTOR.fields_by_name:
            content.ClearField("JPEGThumbnail")
    copy.ClearField("messageContextInfo")
    return copy


def _content(message: Message) -> Any:
    """The part of the message that has a context info (inside a view-once wrapper, the media)."""
    for descriptor, content in message.ListFields():
        if descriptor.message_type is FutureProofMessage.DESCRIPTOR:
            return _content(content.message)
        if descriptor.message_type is not None and "contextInfo" in descriptor.message_type.fields_by_name:
            return content
    return None


def text(payload: dict[str, Any], build: Build) -> Message:
    return Message(conversation=_required(payload, "message"))


def image(payload: dict[str, Any], build: Build) -> Message:
    media = build.fetch(_required(payload, "image"))
    seen = mediainfo.picture(media.data)  # PermanentSendError if it is no image, or a bomb
    return _view_once(Message(imageMessage=ImageMessage(
        caption=payload.get("caption"), mimetype=_sniff(media, "image"), viewOnce=bool(payload.get("viewOnce")),
        width=seen.width, height=seen.height, JPEGThumbnail=seen.thumbnail,
        **_uploaded(_upload(build, media.data, MediaType.MediaImage)))), payload)


def audio(payload: dict[str, Any], build: Build) -> Message:
    """A voice note when asked (`ptt`, the default) and the audio is, or can be made, Opus in OGG;
    otherwise an audio file, which phones play whatever its codec. Audio ffmpeg reads must be in
    a format it is taken in and readable (mediainfo: PermanentSendError otherwise)."""
    media = build.fetch(_required(payload, "audio"))
    data, voice = media.data, False
    if payload.get("ptt", True):
        if mediainfo.is_ogg_opus(data):
            voice = True
        else:
            converted = mediainfo.to_ogg_opus(data)
            if converted is not None:
                data, voice = converted, True
            else:
                build.notes.append("not Opus and no ffmpeg to convert it: sent as an audio file, not a voice note")
    seconds = mediainfo.ogg_opus_seconds(data) if voice else mediainfo.seconds(data, "audio")
    return _view_once(Message(audioMessage=AudioMessage(
        PTT=voice, mimetype=VOICE_MIMETYPE if voice else _sniff(media, "audio"),
        viewOnce=bool(payload.get("viewOnce")), **({"seconds": seconds} if seconds else {}),
        **_uploaded(_upload(build, data, MediaType.MediaAudio)))), payload)


def video(payload: dict[str, Any], build: Build) -> Message:
    media = build.fetch(_required(payload, "video"))
    extra: dict[str, Any] = {}
    seconds = mediainfo.seconds(media.data, "video")  # PermanentSendError if not a video ffmpeg can read
    if seconds:
        extra["seconds"] = seconds
    frame = mediainfo.video_frame(media.data)
    seen = mediainfo.picture(frame, "video frame") if frame else None
    if seen:
        extra.update(width=seen.width, height=seen.height, JPEGThumbnail=seen.thumbnail)
    return _view_once(Message(videoMessage=VideoMessage(
        caption=payload.get("caption"), mimetype=_sniff(media, "video"), viewOnce=bool(payload.get("viewOnce")),
        **extra, **_uploaded(_upload(build, media.data, MediaType.MediaVideo)))), payload)


def document(payload: dict[str, Any], build: Build) -> Message:
    media = build.fetch(_required(payload, "document"))
    extension = payload.get("extension")
    file_name = payload.get("fileName") or (f"document.{extension}" if extension else "document")
    if extension and not file_name.endswith(f".{extension}"):
        file_name = f"{file_name}.{extension}"
    seen = mediainfo.preview(media.data)  # an image sent as a document keeps its preview
    return Message(documentMessage=DocumentMessage(
        mimetype=_sniff(media, "document", extension), fileName=file_name, title=file_name,
        caption=payload.get("caption"), **({"JPEGThumbnail": seen.thumbnail} if seen else {}),
        **_uploaded(_upload(build, media.data, MediaType.MediaDocument)),
    ))


def location(payload: dict[str, Any], build: Build) -> Message:
    return Message(locationMessage=LocationMessage(
        degreesLatitude=float(_required(payload, "latitude")),
        degreesLongitude=float(_required(payload, "longitude")),
        name=payload.get("title"), address=payload.get("address"),
    ))


def _vcard_text(value: str) -> str:
    """vCard 3.0 escaping: a name cannot add lines (fields) of its own."""
    return (value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "")
            .replace(",", "\\,").replace(";", "\\;"))


def contact(payload: dict[str, Any], build: Build) -> Message:
    """A contact card: the number in international format with its WhatsApp id, as phones make
    them; the business description, if any, as WhatsApp's own vCard field."""
    import phonenumbers

    name = str(_required(payload, "contactName"))
    digits = "".join(ch for ch in str(_required(payload, "contactPhone")) if ch.isdigit())
    if not digits:
        raise PermanentSendError("contactPhone has no digits")
    try:
        international = phonenumbers.format_number(phonenumbers.parse(f"+{digits}"),
                                                   phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException as error:
        raise PermanentSendError(f"contactPhone cannot be read as a phone number: {error}") from None
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"FN:{_vcard_text(name)}",
             f"item1.TEL;waid={digits}:{international}", "item1.X-ABLabel:Celular"]
    if payload.get("contactBusinessDescription"):
        lines.append(f"X-WA-BIZ-DESCRIPTION:{_vcard_text(str(payload['contactBusinessDescription']))}")
    return Message(contactMessage=ContactMessage(displayName=name, vcard="\n".join([*lines, "END:VCARD"])))


class _Uploader:
    """What neonize's ButtonMessage wants of a client: `upload(data)`."""

    def __init__(self, build: Build) -> None:
        self.build = build

    def upload(self, data: bytes) -> UploadResponse:
        return _upload(self.build, data, MediaType.MediaImage)


def button_list(payload: dict[str, Any], build: Build) -> Message:
    from neonize.ext.interactive_message.button import ButtonMessage

    spec = _required(payload, "buttonList")
    buttons = spec.get("buttons") or []
    if not buttons:
        raise PermanentSendError("buttonList.buttons is empty")
    message = ButtonMessage().set_body(_required(payload, "message"))
    if spec.get("footer"):
        message.set_footer(str(spec["footer"]))
    if spec.get("image"):
        message.set_image(build.fetch(str(spec["image"])).data)
    for n, button in enumerate(buttons):
        if not isinstance(button, dict) or not button.get("label"):
            raise PermanentSendError(f"buttonList.buttons[{n}].label is missing")
        message.add_reply(str(button["label"]), str(button.get("id") or n + 1))
    return message.prepare_send(_Uploader(build))  # type: ignore[arg-type]


def option_list(payload: dict[str, Any], build: Build) -> Message:
    from neonize.ext.interactive_message.button import ButtonMessage

    spec = _required(payload, "optionList")
    options = spec.get("options") or []
    if not options:
        raise PermanentSendError("optionList.options is empty")
    message = ButtonMessage().set_body(_required(payload, "message"))
    if spec.get("title"):
        message.set_title(str(spec["title"]))
    message.add_selection(str(spec.get("buttonLabel") or "Options")).add_section(str(spec.get("title") or ""))
    for n, option in enumerate(options):
        if not isinstance(option, dict) or not option.get("title"):
            raise PermanentSendError(f"optionList.options[{n}].title is missing")
        message.add_row(str(option["title"]), str(option.get("description") or ""), str(option.get("id") or n + 1))
    return message.prepare_send(_Uploader(build))  # type: ignore[arg-type]


def sticker(payload: dict[str, Any], build: Build) -> Message:
    media = build.fetch(_required(payload, "sticker"))
    webp = mediainfo.sticker_webp(media.data)  # PermanentSendError if it is no image, or a bomb
    return Message(stickerMessage=StickerMessage(
        mimetype="image/webp", width=512, height=512, isAnimated=_animated_webp(webp),
        **_uploaded(_upload(build, webp, MediaType.MediaImage))))


def poll(payload: dict[str, Any], build: Build) -> Message:
    """As whatsmeow's BuildPollCreation: the options, how many may be chosen (0: any), and a
    random message secret, which votes are encrypted with."""
    options = _required(payload, "poll")
    names = [str(o.get("name") if isinstance(o, dict) else o).strip() for o in options]
    if not all(names) or len(set(names)) != len(names):
        raise PermanentSendError("poll options must be distinct and non-empty")
    selectable = int(payload.get("pollMaxOptions") or 0)
    if selectable < 0 or selectable > len(names):
        selectable = 0
    return Message(
        pollCreationMessage=PollCreationMessage(
            name=_required(payload, "message"), selectableOptionsCount=selectable,
            options=[PollCreationMessage.Option(optionName=name) for name in names]),
        messageContextInfo=MessageContextInfo(messageSecret=os.urandom(32)))


def reaction(payload: dict[str, Any], build: Build) -> Message:
    """As whatsmeow's BuildReaction (BuildMessageKey): the key of the message reacted to (in this
    chat; `fromMe` when this instance sent it; in a group, its sender as the participant), the
    emoji ("" removes a reaction), the time."""
    target = quoted(payload, build)
    key = MessageKey(remoteJID=build.to, fromMe=target.from_me, ID=target.id)
    if _group(build.to) and not target.from_me and target.author:
        key.participant = target.author
    return Message(reactionMessage=ReactionMessage(
        key=key, text=str(payload.get("reaction") or ""), senderTimestampMS=int(time.time() * 1000)))


def link(payload: dict[str, Any], build: Build) -> Message:
    """Text with a link preview: the link must be in the text (it is added if not)."""
    url = str(_required(payload, "linkUrl"))
    body = str(_required(payload, "message"))
    if url not in body:
        body = f"{body}\n{url}"
    preview: dict[str, Any] = {}
    if payload.get("image"):
        seen = mediainfo.picture(build.fetch(str(payload["image"])).data, "link preview image")
        preview = {"JPEGThumbnail": seen.thumbnail, "thumbnailWidth": seen.width, "thumbnailHeight": seen.height}
    return Message(extendedTextMessage=ExtendedTextMessage(
        text=body, matchedText=url, title=payload.get("title"),
        description=payload.get("linkDescription"), previewType=ExtendedTextMessage.PreviewType.NONE, **preview))


BUILDERS: dict[str, Callable[[dict[str, Any], Build], Message]] = {
    "text": text,
    "image": image,
    "audio": audio,
    "video": video,
    "document": document,
    "location": location,
    "contact": contact,
    "button-list": button_list,
    "option-list": option_list,
    "sticker": sticker,
    "poll": poll,
    "reaction": reaction,
    "link": link,
}
