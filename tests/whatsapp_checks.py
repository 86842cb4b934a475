"""Checks that load neonize's Go library, run one per subprocess by tests/test_whatsapp.py (a Go
panic ends the process it happens in, so never pytest's). Each check asserts and exits 0.

    python -m tests.whatsapp_checks message_building
    DATABASE_URL=… python -m tests.whatsapp_checks session_events
"""

from __future__ import annotations

import base64
import ctypes
import os
import sys
import threading
import uuid
from typing import Any

from google.protobuf.message import Message as Proto
from neonize.events import EVENT_TO_INT, ConnectedEv, DisconnectedEv, LoggedOutEv
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, UploadResponse
from neonize.utils.enum import MediaType

from tests.stack import wait_until
from workers.transports.base import InstanceDisconnected, OutgoingMessage, PermanentSendError
from workers.transports.neonize.messages import build_message

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


class FakeUpload:
    """Stands in for client.upload(), the network edge: records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, MediaType]] = []

    def __call__(self, data: bytes, kind: MediaType) -> UploadResponse:
        self.calls.append((data, kind))
        return UploadResponse(url=f"https://mmg.whatsapp.net/{kind.name}", DirectPath=f"/v/{kind.name}",
                              MediaKey=b"k" * 32, FileEncSHA256=b"e" * 32, FileSHA256=b"s" * 32,
                              FileLength=len(data))


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def lavfi(*args: str) -> bytes:
    """A media sample made by ffmpeg's own generators (the binary the product uses)."""
    import subprocess

    from workers.transports.neonize import mediainfo

    exe = mediainfo.ffmpeg()
    assert exe, "ffmpeg (imageio-ffmpeg) is a dependency"
    return subprocess.run([exe, "-v", "error", "-f", "lavfi", *args, "-"], capture_output=True, check=True).stdout


def message_building() -> None:
    import json

    from service.core.message_types import TYPES
    from workers.transports.neonize import mediainfo
    from workers.transports.neonize.messages import BUILDERS, VOICE_MIMETYPE

    # The message-type table and the builders name the same types: a new type is both.
    assert set(BUILDERS) == set(TYPES), set(BUILDERS) ^ set(TYPES)
    upload = FakeUpload()

    text = build_message("text", {"message": "Olá!"}, upload)
    assert text.conversation == "Olá!"

    once = build_message("image", {"image": data_uri("image/png", PNG), "caption": "look", "viewOnce": True},
                         upload)
    assert not once.HasField("imageMessage")  # a view-once image is inside its wrapper
    image = once.viewOnceMessage.message.imageMessage
    assert (image.mimetype, image.caption, image.viewOnce) == ("image/png", "look", True)
    assert (image.URL, image.directPath, image.fileLength) == ("https://mmg.whatsapp.net/MediaImage",
                                                               "/v/MediaImage", len(PNG))
    assert image.mediaKey == b"k" * 32 and image.fileSHA256 == b"s" * 32 and image.fileEncSHA256 == b"e" * 32
    assert (image.width, image.height) == (1, 1) and image.JPEGThumbnail.startswith(b"\xff\xd8")
    assert upload.calls[-1] == (PNG, MediaType.MediaImage)

    # Voice notes: Opus in OGG as it is, with its duration; anything else converted to it.
    opus = lavfi("-i", "sine=duration=2", "-c:a", "libopus", "-f", "ogg")
    voice = build_message("audio", {"audio": data_uri("audio/ogg", opus)}, upload).audioMessage
    assert (voice.PTT, voice.mimetype, voice.seconds, voice.fileLength) == (True, VOICE_MIMETYPE, 2, len(opus))
    assert upload.calls[-1] == (opus, MediaType.MediaAudio)
    wav = lavfi("-i", "sine=duration=3", "-f", "wav")
    converted = build_message("audio", {"audio": data_uri("audio/wav", wav)}, upload).audioMessage
    assert (converted.PTT, converted.mimetype, converted.seconds) == (True, VOICE_MIMETYPE, 3)
    assert mediainfo.is_ogg_opus(upload.calls[-1][0]) and upload.calls[-1][0] != wav
    song = build_message("audio", {"audio": data_uri("audio/wav", wav), "ptt": False}, upload).audioMessage
    assert (song.PTT, song.mimetype, song.seconds) == (False, "audio/wav", 3) and upload.calls[-1][0] == wav
    real_ffmpeg = mediainfo.ffmpeg
    mediainfo.ffmpeg = lambda: None  # type: ignore[assignment]
    try:  # no ffmpeg at all: not a voice note, but still sent, as an audio file
        plain = build_message("audio", {"audio": data_uri("audio/wav", wav)}, upload).audioMessage
        assert (plain.PTT, plain.mimetype) == (False, "audio/wav") and upload.calls[-1][0] == wav
    finally:
        mediainfo.ffmpeg = real_ffmpeg  # type: ignore[assignment]

    mp4 = lavfi("-i", "testsrc=duration=2:size=160x120:rate=10", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                "-movflags", "frag_keyframe+empty_moov", "-f", "mp4")
    video = build_message("video", {"video": data_uri("video/mp4", mp4), "caption": "clip"}, upload).videoMessage
    assert (video.mimetype, video.caption, video.URL) == ("video/mp4", "clip", "https://mmg.whatsapp.net/MediaVideo")
    assert (video.seconds, video.width, video.height) == (2, 160, 120) and video.JPEGThumbnail.startswith(b"\xff\xd8")

    pdf = base64.b64encode(b"%PDF-1.4 tiny").decode()
    document = build_message("document", {"document": pdf, "extension": "pdf", "fileName": "invoice",
                                          "caption": "your invoice"}, upload).documentMessage
    assert (document.fileName, document.title, document.mimetype, document.caption) == (
        "invoice.pdf", "invoice.pdf", "application/pdf", "your invoice")
    assert upload.calls[-1] == (b"%PDF-1.4 tiny", MediaType.MediaDocument)

    location = build_message("location", {"latitude": -23.5505, "longitude": -46.6333, "title": "Sé",
                                          "address": "Praça da Sé, São Paulo"}, upload).locationMessage
    assert (location.degreesLatitude, location.degreesLongitude) == (-23.5505, -46.6333)
    assert (location.name, location.address) == ("Sé", "Praça da Sé, São Paulo")

    contact = build_message("contact", {"contactName": "Ana", "contactPhone": "+55 11 98888-7777"},
                            upload).contactMessage
    assert contact.displayName == "Ana"
    assert "FN:Ana" in contact.vcard and "waid=5511988887777" in contact.vcard

    # Buttons and lists as native-flow interactive messages.
    buttons = build_message("button-list", {"message": "Choose", "buttonList": {
        "buttons": [{"id": "yes", "label": "Yes"}, {"label": "No"}]}}, upload).interactiveMessage
    assert buttons.body.text == "Choose"
    assert [(b.name, json.loads(b.buttonParamsJSON)) for b in buttons.nativeFlowMessage.buttons] == [
        ("quick_reply", {"display_text": "Yes", "id": "yes"}), ("quick_reply", {"display_text": "No", "id": "2"})]
    options = build_message("option-list", {"message": "Menu", "optionList": {
        "title": "Today", "buttonLabel": "Open", "options": [
            {"id": "a", "title": "Pizza", "description": "large"}, {"title": "Soup"}]}}, upload).interactiveMessage
    assert (options.body.text, options.header.title) == ("Menu", "Today")
    (selection,) = options.nativeFlowMessage.buttons
    params = json.loads(selection.buttonParamsJSON)
    assert (selection.name, params["title"]) == ("single_select", "Open")
    assert [(r["id"], r["title"], r.get("description")) for r in params["sections"][0]["rows"]] == [
        ("a", "Pizza", "large"), ("2", "Soup", "")]

    sticker = build_message("sticker", {"sticker": data_uri("image/png", PNG)}, upload).stickerMessage
    webp = upload.calls[-1][0]
    assert (sticker.mimetype, sticker.width, sticker.height) == ("image/webp", 512, 512)
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP" and sticker.fileLength == len(webp)

    poll = build_message("poll", {"message": "Lunch?", "poll": [{"name": "Pizza"}, {"name": "Soup"}],
                                  "pollMaxOptions": 1}, upload)
    assert (poll.pollCreationMessage.name, poll.pollCreationMessage.selectableOptionsCount) == ("Lunch?", 1)
    assert [o.optionName for o in poll.pollCreationMessage.options] == ["Pizza", "Soup"]
    assert len(poll.messageContextInfo.messageSecret) == 32

    reaction = build_message("reaction", {"reaction": "👍", "messageId": "3EB0ABC"}, upload,
                             to="5511999999999@s.whatsapp.net").reactionMessage
    assert (reaction.text, reaction.key.ID, reaction.key.remoteJID, reaction.key.fromMe) == (
        "👍", "3EB0ABC", "5511999999999@s.whatsapp.net", False)
    assert reaction.senderTimestampMS > 1_700_000_000_000

    link = build_message("link", {"message": "Our shop", "linkUrl": "https://example.com/shop", "title": "Shop",
                                  "linkDescription": "All we sell", "image": data_uri("image/png", PNG)},
                         upload).extendedTextMessage
    assert (link.text, link.matchedText, link.title, link.description) == (
        "Our shop\nhttps://example.com/shop", "https://example.com/shop", "Shop", "All we sell")
    assert link.JPEGThumbnail.startswith(b"\xff\xd8")

    # Any type but a reaction may reply to a message (Z-API's messageId): WhatsApp's quote.
    reply = build_message("text", {"message": "yes", "messageId": "3EB0QUOTED"}, upload,
                          to="5511999999999@s.whatsapp.net").extendedTextMessage
    assert (reply.text, reply.contextInfo.stanzaID, reply.contextInfo.participant) == (
        "yes", "3EB0QUOTED", "5511999999999@s.whatsapp.net")
    quoted_image = build_message("image", {"image": data_uri("image/png", PNG), "messageId": "3EB0QUOTED"},
                                 upload).imageMessage
    assert quoted_image.contextInfo.stanzaID == "3EB0QUOTED"
    quoted_poll = build_message("poll", {"message": "?", "poll": [{"name": "a"}, {"name": "b"}],
                                         "messageId": "3EB0QUOTED"}, upload)
    assert quoted_poll.pollCreationMessage.contextInfo.stanzaID == "3EB0QUOTED"
    assert not build_message("text", {"message": "plain"}, upload).HasField("extendedTextMessage")

    for message_type, payload, complaint in (
        ("image", {"caption": "no image"}, "image is missing"),
        ("story", {"x": "y"}, "unsupported message type"),
        ("button-list", {"message": "m", "buttonList": {"buttons": []}}, "buttons is empty"),
        ("contact", {"contactName": "Ana", "contactPhone": "none"}, "no digits"),
        ("poll", {"message": "?", "poll": [{"name": "a"}, {"name": "a"}]}, "distinct"),
        ("sticker", {"sticker": base64.b64encode(b"not an image").decode()}, "not an image"),
    ):
        try:
            build_message(message_type, payload, upload)
        except PermanentSendError as error:
            assert complaint in str(error), error
        else:
            raise AssertionError(f"{message_type} {payload} should be refused")
    print("message building: every type checked")


def message_fixes() -> None:
    """tests/test_neonize_messages.py: generic download types, view-once wrappers, uploads refused
    for size, animated stickers."""
    import io

    from PIL import Image

    from workers.transports.neonize.media import Media

    which = sys.argv[2]
    upload = FakeUpload()

    if which == "generic_type":
        # S3 answers `binary/octet-stream`: the type WhatsApp is told comes from the bytes.
        jpeg = io.BytesIO()
        Image.new("RGB", (4, 3), "red").save(jpeg, format="JPEG")
        for served, data, expected in (("binary/octet-stream", PNG, "image/png"),
                                       ("application/octet-stream", PNG, "image/png"),
                                       (None, jpeg.getvalue(), "image/jpeg"),
                                       ("", PNG, "image/png"),
                                       ("text/plain", PNG, "image/png"),  # not an image's type
                                       ("image/png", PNG, "image/png")):
            fetched = Media(data, served)
            built = build_message("image", {"image": "https://s3.example.com/x"}, upload,
                                  fetch=lambda _url, m=fetched: m).imageMessage
            assert built.mimetype == expected, (served, built.mimetype)
        pdf = Media(b"%PDF-1.4 tiny", "binary/octet-stream")
        document = build_message("document", {"document": "https://s3.example.com/x"}, upload,
                                 fetch=lambda _url: pdf).documentMessage
        assert document.mimetype == "application/pdf", document.mimetype
        print("generic type: the bytes decide")

    elif which == "view_once":
        once = build_message("image", {"image": data_uri("image/png", PNG), "caption": "c", "viewOnce": True}, upload)
        assert once.HasField("viewOnceMessage") and not once.HasField("imageMessage"), once
        inner = once.viewOnceMessage.message.imageMessage
        assert (inner.viewOnce, inner.caption, inner.mimetype) == (True, "c", "image/png")
        assert inner.URL == "https://mmg.whatsapp.net/MediaImage"
        plain = build_message("image", {"image": data_uri("image/png", PNG)}, upload)
        assert plain.HasField("imageMessage") and not plain.HasField("viewOnceMessage")
        assert not plain.imageMessage.viewOnce
        # A view-once reply: the quote is on the image inside the wrapper.
        quoted = build_message("image", {"image": data_uri("image/png", PNG), "viewOnce": True,
                                         "messageId": "3EB0Q"}, upload, to="5511999999999@s.whatsapp.net")
        assert quoted.viewOnceMessage.message.imageMessage.contextInfo.stanzaID == "3EB0Q"
        opus = lavfi("-i", "sine=duration=1", "-c:a", "libopus", "-f", "ogg")
        voice = build_message("audio", {"audio": data_uri("audio/ogg", opus), "viewOnce": True}, upload)
        assert voice.viewOnceMessage.message.audioMessage.viewOnce and voice.viewOnceMessage.message.audioMessage.PTT
        mp4 = lavfi("-i", "testsrc=duration=1:size=64x48:rate=5", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-movflags", "frag_keyframe+empty_moov", "-f", "mp4")
        clip = build_message("video", {"video": data_uri("video/mp4", mp4), "viewOnce": True}, upload)
        assert clip.viewOnceMessage.message.videoMessage.viewOnce
        print("view once: wrapped")

    elif which == "upload_too_large":
        def refused(data: bytes, kind: MediaType) -> UploadResponse:
            raise Exception("upload failed with status code 413")  # whatsmeow's words (upload.go)

        def broken(data: bytes, kind: MediaType) -> UploadResponse:
            raise Exception("failed to execute request: connection reset")

        for message_type, payload in (("image", {"image": data_uri("image/png", PNG)}),
                                      ("document", {"document": data_uri("application/pdf", b"%PDF-1.4")}),
                                      ("sticker", {"sticker": data_uri("image/png", PNG)})):
            try:
                build_message(message_type, payload, refused)
            except PermanentSendError as error:
                assert "refused the upload as too large" in str(error) and "413" in str(error), error
            else:
                raise AssertionError(f"{message_type}: a 413 upload must be a permanent error")
        try:
            build_message("image", {"image": data_uri("image/png", PNG)}, broken)
        except PermanentSendError:
            raise AssertionError("only a refusal for size is permanent") from None
        except Exception as error:
            assert "connection reset" in str(error)
        print("upload too large: permanent")

    elif which == "animated_sticker":
        frames = [Image.new("RGBA", (64, 64), colour) for colour in ("red", "blue")]
        animated = io.BytesIO()
        frames[0].save(animated, format="WEBP", save_all=True, append_images=frames[1:], duration=100, loop=0)
        moving = build_message("sticker", {"sticker": data_uri("image/webp", animated.getvalue())},
                               upload).stickerMessage
        assert moving.isAnimated, "an animated WebP is an animated sticker"
        assert upload.calls[-1][0] == animated.getvalue()
        still = io.BytesIO()
        frames[0].save(still, format="WEBP")
        for data in (PNG, still.getvalue()):
            sticker = build_message("sticker", {"sticker": data_uri("image/png", data)}, upload).stickerMessage
            assert not sticker.isAnimated
        print("animated sticker: marked")

    elif which == "reply_quote":
        reply_quote(upload)

    elif which == "group_reaction":
        group_reaction(upload)

    elif which == "media_budget":
        media_budget()


CONTACT = "5511999999999@s.whatsapp.net"
OWN = "5511988887777@s.whatsapp.net"
GROUP = "120363025246125486@g.us"


def reply_quote(upload: FakeUpload) -> None:
    """A reply quotes the message Z-API's `messageId` names, with its author: the contact in a
    one-to-one chat, us when this instance sent it (its text quoted) or `fromMe` says so, the
    `participant` given in a group (none without one: never the group's address)."""

    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    theirs = build_message("text", {"message": "yes", "messageId": "3EB0THEIRS"}, upload, to=CONTACT,
                           own=OWN).extendedTextMessage.contextInfo
    assert (theirs.stanzaID, theirs.participant) == ("3EB0THEIRS", CONTACT), theirs
    said = {"3EB0OURS": Message(conversation="Your order shipped")}
    ours = build_message("text", {"message": "tracking: X1", "messageId": "3EB0OURS"}, upload, to=CONTACT,
                         own=OWN, sent=said.get).extendedTextMessage.contextInfo
    assert (ours.stanzaID, ours.participant) == ("3EB0OURS", OWN), ours
    assert ours.quotedMessage.conversation == "Your order shipped", ours.quotedMessage
    flagged = build_message("text", {"message": "m", "messageId": "3EB0X", "fromMe": True}, upload, to=CONTACT,
                            own=OWN).extendedTextMessage.contextInfo
    assert flagged.participant == OWN
    in_group = build_message("image", {"image": data_uri("image/png", PNG), "messageId": "3EB0G",
                                       "participant": "+55 11 97777-6666"}, upload, to=GROUP, own=OWN)
    assert in_group.imageMessage.contextInfo.participant == "5511977776666@s.whatsapp.net"
    unknown = build_message("text", {"message": "m", "messageId": "3EB0G"}, upload, to=GROUP,
                            own=OWN).extendedTextMessage.contextInfo
    assert unknown.stanzaID == "3EB0G" and not unknown.participant, "no author rather than a wrong one"

    # Through the transport: a reply to a message it sent quotes that message, by us; sent to the
    # number's other form, the quote's author follows.
    session = connected_session(client=SlowClient(),
                              jid="5511988887777:12@s.whatsapp.net")
    frames: list[Any] = []
    real_send = session.client.send_message

    def send_message(jid: Any, message: Any) -> Any:
        frames.append(message)
        return real_send(jid, message)

    session.client.send_message = send_message
    transport = transport_for(session, timeout=5, threads=2)
    instance_id = uuid.uuid4()
    first = transport.send(text_message(instance_id, "Your order shipped"))
    transport.send(OutgoingMessage(zaap_id=uuid.uuid4().hex, instance_id=instance_id, phone="5511999999999",
                                   message_type="text", payload={"message": "X1", "messageId": first}))
    context = frames[-1].extendedTextMessage.contextInfo
    assert (context.stanzaID, context.participant, context.quotedMessage.conversation) == (
        first, OWN, "Your order shipped"), context
    transport.close()

    from workers.transports.neonize.messages import retarget

    moved = retarget(build_message("text", {"message": "m", "messageId": "3EB0T"}, upload, to=CONTACT),
                     CONTACT, "551199999999@s.whatsapp.net")
    assert moved.extendedTextMessage.contextInfo.participant == "551199999999@s.whatsapp.net"
    print("reply quote: the original, by its author")


def group_reaction(upload: FakeUpload) -> None:
    """A reaction in a group names the reacted message's sender (whatsmeow's BuildMessageKey:
    `participant` unless it is ours); one-to-one, none; in a group without it, none."""
    theirs = build_message("reaction", {"reaction": "👍", "messageId": "3EB0R", "participant": "5511977776666"},
                           upload, to=GROUP, own=OWN).reactionMessage.key
    assert (theirs.remoteJID, theirs.fromMe, theirs.ID, theirs.participant) == (
        GROUP, False, "3EB0R", "5511977776666@s.whatsapp.net"), theirs
    ours = build_message("reaction", {"reaction": "👍", "messageId": "3EB0R", "fromMe": True}, upload,
                         to=GROUP, own=OWN).reactionMessage.key
    assert ours.fromMe and not ours.HasField("participant"), ours
    direct = build_message("reaction", {"reaction": "👍", "messageId": "3EB0R"}, upload, to=CONTACT,
                           own=OWN).reactionMessage.key
    assert (direct.remoteJID, direct.fromMe) == (CONTACT, False) and not direct.HasField("participant"), direct
    unknown = build_message("reaction", {"reaction": "👍", "messageId": "3EB0R"}, upload, to=GROUP,
                            own=OWN).reactionMessage.key
    assert unknown.ID == "3EB0R" and not unknown.HasField("participant"), "no author rather than a wrong one"
    print("group reaction: with the participant")


def media_budget() -> None:
    """Media held from fetch to upload stays within the worker's budget: no more large media at
    once than its slots, their bytes within its total; a send that cannot get its share in time
    waits (InstanceDisconnected), taking nothing."""
    from workers.transports.neonize import media, messages
    from workers.transports.neonize.media import Media, MediaBudget

    budget = MediaBudget(total=3_000_000, large=2, large_at=1_000_000, wait=5)
    messages.BUDGET = budget  # type: ignore[attr-defined]
    inside = {"now": 0, "most": 0, "bytes": 0, "most_bytes": 0}
    lock, gate = threading.Lock(), threading.Event()

    def slow_upload(data: bytes, kind: MediaType) -> UploadResponse:
        with lock:
            inside["now"] += 1
            inside["bytes"] += len(data)
            inside["most"] = max(inside["most"], inside["now"])
            inside["most_bytes"] = max(inside["most_bytes"], inside["bytes"])
        gate.wait(5)
        with lock:
            inside["now"] -= 1
            inside["bytes"] -= len(data)
        return FakeUpload()(data, kind)

    def fetch(size: int) -> Any:
        return lambda _url: Media(b"%PDF" + b"\x01" * (size - 4), "application/pdf")

    def send(size: int) -> None:
        build_message("document", {"document": "https://example.com/x.pdf"}, slow_upload, fetch=fetch(size))

    threads = [threading.Thread(target=send, args=(1_400_000,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_until(lambda: inside["now"] == 2, 10, "two large media to be uploading", interval=0.01)
    assert budget.large_used == 2 and budget.used == 2_800_000, (budget.large_used, budget.used)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert inside["most"] == 2, inside
    assert budget.peak <= 3_000_000 and (budget.used, budget.large_used) == (0, 0), (budget.peak, budget.used)

    # Small media (known or found small) take no large slot: many at once, within the total bytes.
    gate.clear()
    small = [threading.Thread(target=send, args=(600_000,)) for _ in range(6)]
    for thread in small:
        thread.start()
    wait_until(lambda: inside["now"] == 5, 10,
               "five small media to be uploading", interval=0.01)  # 5 × 0.6 MB = the total
    assert budget.used <= 3_000_000 and inside["now"] == 5, (budget.used, inside)
    gate.set()
    for thread in small:
        thread.join(10)

    # No share within the wait: the send waits, and what it took is given back.
    gate.clear()
    budget.wait = 0.3
    hogs = [threading.Thread(target=send, args=(1_400_000,)) for _ in range(2)]
    for thread in hogs:
        thread.start()
    wait_until(lambda: inside["now"] == 2, 10, "the large slots to be taken", interval=0.01)
    try:
        send(1_400_000)
    except InstanceDisconnected as error:
        assert "media memory" in str(error), error
    else:
        raise AssertionError("a send over the budget must wait")
    assert budget.large_used == 2 and budget.used == 2_800_000
    gate.set()
    for thread in hogs:
        thread.join(10)
    assert (budget.used, budget.large_used) == (0, 0)
    assert len(PNG) <= (media.known_size(data_uri("image/png", PNG)) or 0) <= len(PNG) + 2  # base64 padding
    print("media budget: slots and bytes held")


def push(client: Any, event: Proto) -> None:
    """Through the client's real dispatcher, as the Go side delivers events."""
    data = event.SerializePartialToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    client.event.execute(0, ctypes.addressof(buffer), len(data), EVENT_TO_INT[type(event)])


class FakeStore:
    """The session store as a session sees it, for a device that exists (no WhatsApp needed)."""

    database_url = ""

    def url(self, key: str) -> str:
        return f"postgresql://nobody@/nothing?application_name={key}"

    def device_exists(self, jid: str) -> bool:
        return True

    def release(self, key: str) -> None:
        pass


def session_events() -> None:
    """Every connection outcome whatsmeow reports is a visible state with its reason, through the
    client's real event dispatcher; the ones whatsmeow does not reconnect after end the connect."""
    from neonize.events import (
        ClientOutdatedEv,
        ConnectFailureEv,
        KeepAliveRestoredEv,
        KeepAliveTimeoutEv,
        ReceiptEv,
        StreamErrorEv,
        TemporaryBanEv,
    )
    from neonize.proto.Neonize_pb2 import JID, MessageSource
    from neonize.utils.enum import Presence

    from service.core import Core, instances
    from service.core.session_host import SessionHost
    from service.db.pools import fetch_one, make_pool
    from service.settings import Settings
    from workers.transports.neonize import sessions
    from workers.transports.neonize.sessions import Session
    from workers.transports.neonize.transport import NeonizeTransport

    database_url = os.environ["DATABASE_URL"]
    pool = make_pool(database_url, max_size=4)
    core = Core(pool, Settings(message_queue_min_jitter=0, message_queue_max_jitter=0))
    instance = instances.create(core, transport="neonize")
    host = SessionHost(core, uuid.uuid4())
    assert instance.id in host.lease_round(judge=True), "the session is this worker's to record"
    seen: list[str] = []
    stopped: list[str] = []
    sessions.stop_client = lambda client, **_: stopped.append(client.uuid.decode())  # type: ignore[assignment]

    def stops_waiting(found: Any) -> Any:  # what a session does from a thread of its own
        import time

        deadline = time.monotonic() + 5
        while not found() and time.monotonic() < deadline:
            time.sleep(0.01)
        return found()

    def stops(n: int) -> bool:  # the session stops clients from a thread of their own
        import time

        deadline = time.monotonic() + 5
        while len(stopped) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(stopped) == n

    def listener(instance_id: uuid.UUID, state: str, detail: str | None, extra: dict[str, Any]) -> None:
        seen.append(state)
        host.record(instance_id, state, detail, **extra)

    def row() -> dict[str, Any]:
        found = fetch_one(pool, "SELECT * FROM instances WHERE id = %(id)s", {"id": instance.id})
        assert found is not None
        return found

    def state() -> tuple[str, str]:
        found = row()
        return found["connection_state"], found["connection_detail"] or ""

    jid = "5511988887777:12@s.whatsapp.net"
    session = Session(instance.id, FakeStore(), jid, listener, on_receipt=host.receipt)  # type: ignore[arg-type]
    client = session.client
    assert client is not None and client.uuid.decode().startswith(f"{instance.id}/")
    first_key = client.uuid.decode()
    announced: list[Any] = []
    client.send_presence = announced.append  # type: ignore[method-assign] # the network edge

    push(client, ConnectedEv())
    assert state()[0] == "connected" and session.connected
    assert stops_waiting(lambda: announced) == [Presence.AVAILABLE], "online, so that typing… shows"

    # Receipts from the contact land on the message WhatsApp named; our own devices' do not.
    zaap_id = uuid.uuid4().hex
    with pool.connection() as conn:
        conn.execute("INSERT INTO messages (zaap_id, instance_id, sequence, message_type, phone, payload,"
                     " scheduled_at, not_before, status, max_attempts, whatsapp_message_id)"
                     " VALUES (%s, %s, 1, 'text', '5511999999999', '{}', now(), now(), 'completed', 3, '3EB0AA')",
                     (zaap_id, instance.id))
    source = MessageSource(Chat=JID(User="5511999999999", Server="s.whatsapp.net"), IsFromMe=False)
    push(client, ReceiptEv(MessageSource=source, MessageIDs=["3EB0AA"], Timestamp=1_800_000_000,
                           Type=ReceiptEv.READ_SELF))
    push(client, ReceiptEv(MessageSource=source, MessageIDs=["3EB0AA", "unknown"], Timestamp=1_800_000_000,
                           Type=ReceiptEv.READ))
    receipts = fetch_one(pool, "SELECT delivered_at, read_at, played_at FROM messages WHERE zaap_id = %(z)s",
                         {"z": zaap_id})
    assert receipts is not None and receipts["played_at"] is None
    assert receipts["delivered_at"] == receipts["read_at"] and receipts["read_at"].timestamp() == 1_800_000_000
    push(client, KeepAliveTimeoutEv(ErrorCount=1, LastSuccess=0))
    assert state() == ("disconnected", "WhatsApp stopped answering keepalives (1 in a row)")
    assert not session.connected and not stopped
    push(client, KeepAliveRestoredEv())
    assert state()[0] == "connected"
    push(client, KeepAliveTimeoutEv(ErrorCount=3, LastSuccess=0))
    assert stops(1), "three keepalive failures in a row: the connection is made anew"
    push(client, ConnectFailureEv(Reason=ConnectFailureReason.Value("SERVICE_UNAVAILABLE"), Message="try later"))
    assert state() == ("connect_failed",
                       "WhatsApp refused the connection (SERVICE_UNAVAILABLE: try later); reconnecting")
    push(client, StreamErrorEv(Code="503"))
    assert state() == ("disconnected", "WhatsApp stream error 503; reconnecting")
    push(client, ClientOutdatedEv())
    assert state()[0] == "outdated" and "upgrade neonize" in state()[1]
    session.restart()
    client = session.client
    assert client is not None and client.uuid.decode().startswith(f"{instance.id}/")
    assert client.uuid.decode() != first_key, "a restart's client has a key of its own"
    client.send_presence = announced.append  # type: ignore[method-assign]
    push(client, TemporaryBanEv(Code=TemporaryBanEv.BLOCKED_BY_USERS, Expire=3600))
    assert state() == ("banned", "temporarily banned by WhatsApp (BLOCKED_BY_USERS); reconnects by itself in 3600s")
    assert session._banned_until > 0
    push(client, ConnectedEv())
    push(client, DisconnectedEv())
    assert state() == ("disconnected", "connection lost; reconnecting")
    push(client, LoggedOutEv(Reason=ConnectFailureReason.Value("LOGGED_OUT")))
    assert (row()["connection_state"], row()["whatsapp_jid"]) == ("logged_out", None)
    assert "pair again" in row()["connection_detail"] and session.jid is None
    assert seen == ["connected", "disconnected", "connected", "disconnected", "connect_failed", "disconnected",
                    "outdated",
                    "banned", "connected", "disconnected", "logged_out"], seen
    assert stops(7), stopped  # keepalive, failure, stream error, outdated, restart's old client, ban, logout

    class Holder:
        owner = True

        def get(self, instance_id: uuid.UUID) -> Session | None:
            return session if instance_id == instance.id else None

    # A temporary ban ends by itself: when it expires the session connects again, unasked.
    import threading
    import time

    reconnected: list[float] = []
    release = threading.Event()
    banned = Session(instance.id, FakeStore(), jid, lambda *a: None, announce_available=False)  # type: ignore[arg-type]

    def connect_once() -> None:  # the network edge: a connect that holds until the session stops
        reconnected.append(time.monotonic())
        release.wait(10)

    banned._connect_once = connect_once  # type: ignore[method-assign]
    assert banned.client is not None
    banned_key = banned.client.uuid.decode()
    assert banned_key not in (first_key, client.uuid.decode()), "keys are unique in the process"
    push(banned.client, TemporaryBanEv(Code=TemporaryBanEv.SENT_TOO_MANY_SAME_MESSAGE, Expire=1))
    started = time.monotonic()
    banned.start()
    assert stops_waiting(lambda: reconnected), "the session did not reconnect when the ban expired"
    assert reconnected[0] - started >= 0.8, "reconnected before the ban expired"
    assert banned.client is not None and banned.client.uuid.decode() != banned_key, "a new client after the ban"
    release.set()
    banned._stopping.set()

    transport = NeonizeTransport(Holder(), timeout=5, threads=1)  # type: ignore[arg-type]
    try:
        transport.send(OutgoingMessage(zaap_id="0" * 32, instance_id=instance.id, phone="5511999999999",
                                       message_type="text", payload={"message": "hi"}))
    except InstanceDisconnected as error:
        assert "logged_out" in str(error) and "pair again" in str(error), error
    else:
        raise AssertionError("a logged-out instance must not send")
    assert not transport.is_connected(instance.id)
    transport.calls.shutdown(wait=False)
    pool.close()
    print("session events: every outcome is a state with its reason")


def client_keys() -> None:
    """Every client has a registry key of its own, even for one JID (neonize would key both by
    the phone number, so stopping the old one stopped the new), and no finalizer that could stop
    it from a garbage collection outside the registry lock."""
    import gc

    from neonize.client import NewClient

    from workers.transports.neonize.registry import new_client
    from workers.transports.neonize.sessions import parse_jid

    jid = parse_jid("5511988887777:12@s.whatsapp.net")
    plain = NewClient("postgresql://x@/y", jid=jid, uuid="ignored")
    assert plain.uuid == b"5511988887777", "neonize keys a client with a JID by its number"
    old, new = new_client("postgresql://x@/y", "i/1", jid), new_client("postgresql://x@/y", "i/2", jid)
    assert (old.uuid, new.uuid) == (b"i/1", b"i/2") and old.jid == jid and not old.new_device
    assert not old._stop_finalizer.alive and not new._stop_finalizer.alive
    assert new_client("postgresql://x@/y", "i/3", None).new_device
    stops: list[bytes] = []
    import neonize.client

    real_stop = neonize.client.gocode.Stop
    neonize.client.gocode.Stop = lambda key: stops.append(key)  # type: ignore[attr-defined]
    try:
        del old
        gc.collect()
        plain._stop_finalizer()  # neonize's own finalizer would stop by the number
    finally:
        neonize.client.gocode.Stop = real_stop  # type: ignore[attr-defined]
    assert stops == [b"5511988887777"], stops
    print("client keys: one per client, no finalizer")


def pairing() -> None:
    """Pairing runs in a child process that is killed when the attempt is over: the latest QR
    code is shown, an attempt stuck in Go (as neonize's is after the QR window) ends at its
    deadline, a phone code comes back to the caller, and a linked device connects here."""
    import subprocess
    import tempfile
    import time

    from workers.transports.neonize.sessions import PairingRefused, Session

    script = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    script.write(FAKE_PAIRING_CHILD)
    script.close()
    states: list[tuple[str, str | None, dict[str, Any]]] = []

    def listener(instance_id: uuid.UUID, state: str, detail: str | None, extra: dict[str, Any]) -> None:
        states.append((state, detail, extra))

    def wait(predicate: Any, what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {states[-5:]}"
            time.sleep(0.02)

    class Unpaired(FakeStore):
        def device_exists(self, jid: str) -> bool:
            return jid == "5511988887777:3@s.whatsapp.net"

    session = Session(uuid.uuid4(), Unpaired(), None, listener, pairing_deadline=1.5,  # type: ignore[arg-type]
                      pairing_command=[sys.executable, script.name])
    assert session.client is None, "an unpaired instance connects nothing until asked"
    session.start()
    wait(lambda: session.state == "unpaired", "unpaired")

    assert session.pair() is None
    wait(lambda: states[-1][0] == "qr" and states[-1][2]["qr"] == "2@third", "the latest QR code")
    first = session.pairing
    assert first is not None and session.pair() is None and session.pairing is first, "one QR attempt at a time"
    wait(lambda: session.state == "unpaired", "the stuck attempt to end at its deadline")
    assert "expired unused" in (session.detail or "") and states[-1][2] == {"qr": None}
    assert first.process.poll() is not None, "the stuck child was killed"

    # A phone code: the caller gets it; once linked, the session connects with the device here.
    code = session.pair("5511988887777", wait=10)
    assert code == "ABCD-EFGH", code
    wait(lambda: session.client is not None, "the linked device's client")
    assert session.jid == "5511988887777:3@s.whatsapp.net" and ("paired", None, {"jid": session.jid}) in states
    assert session.client is not None and session.client.jid.User == "5511988887777"
    try:
        session.pair()
    except PairingRefused as error:
        assert "already paired" in str(error)
    else:
        raise AssertionError("a paired instance must refuse another pairing")
    session.stop()

    # Stopping a session kills its pairing child at once.
    other = Session(uuid.uuid4(), Unpaired(), None, listener, pairing_deadline=60,  # type: ignore[arg-type]
                    pairing_command=[sys.executable, script.name])
    other.start()
    other.pair()
    attempt = other.pairing
    assert attempt is not None
    wait(lambda: other.state == "qr", "a QR code")
    other.stop()
    assert attempt.process.wait(5) is not None
    try:
        subprocess.run(["kill", "-0", str(attempt.pid)], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        pass
    else:
        raise AssertionError("the pairing child outlived its session")
    print("pairing: latest code shown, stuck attempt killed, phone code returned, linked device connected")


def store_connections(database_url: str) -> int:
    """How many session-store connections are open (their application_name says so)."""
    import psycopg

    from workers.transports.neonize.store import APPLICATION_PREFIX

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                           (APPLICATION_PREFIX + "%",)).fetchone()
    return int(row[0]) if row else 0


def store() -> None:
    """The session store as a worker meets it after a restart: a comma in a paired account's name
    (which breaks neonize's GetAllDevices parsing) changes nothing, and the connection pool that
    every connect opens in Go is ended with the connect instead of piling up."""
    import psycopg
    from neonize.client import ClientFactory

    from tests.whatsmeow_rows import insert_device
    from workers.transports.neonize.sessions import Session
    from workers.transports.neonize.store import Store, init_store, store_url

    database_url = os.environ["DATABASE_URL"]
    init_store(database_url, "whatsmeow")
    jid = "5511988887777:12@s.whatsapp.net"
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert_device(conn, jid, push_name="Acme, Inc.", business_name="Acme, Inc. (shop)")
    try:
        ClientFactory.get_all_devices_from_db(store_url(database_url, "whatsmeow"))
    except ValueError:
        pass  # neonize's own reading of the devices fails on the comma
    else:
        raise AssertionError("neonize's GetAllDevices parsing was expected to fail on a comma")
    init_store(database_url, "whatsmeow")  # a worker starting again: fine
    sessions_store = Store(database_url, "whatsmeow")
    assert sessions_store.device_exists(jid)

    states: list[tuple[str, str | None]] = []
    session = Session(uuid.uuid4(), sessions_store, jid, lambda i, state, detail, extra: states.append((state, detail)))
    assert session.client is not None and session.jid == jid
    baseline = store_connections(database_url)
    # What neonize does on its own: every connect leaves its pool's connections open.
    leaky = session.client
    for _ in range(2):
        try:
            leaky.connect()
        except Exception as error:
            assert "failed to dial" in str(error), error  # no WhatsApp reachable from here
    leaked = store_connections(database_url) - baseline
    assert leaked >= 2, f"expected neonize to leave its store connections open, found {leaked}"
    sessions_store.release(leaky.uuid.decode())
    assert store_connections(database_url) == baseline
    # Through the session: each failed connect ends its own.
    for _ in range(3):
        session._connect_once()
        assert states[-1][0] == "disconnected" and "failed to dial" in (states[-1][1] or ""), states[-1]
        assert store_connections(database_url) == baseline
    print(f"store: commas are fine; neonize leaked {leaked} connections in 2 connects, the session none in 3")


def number_forms() -> None:
    """A Brazilian mobile number WhatsApp knows without its ninth digit: whatsmeow says "no LID
    found" before sending anything, the transport asks WhatsApp which form is registered, sends
    there and remembers it; any other number with no account is a permanent failure. Every call
    holds the Go registry's shared side."""
    from types import SimpleNamespace

    from neonize.proto.Neonize_pb2 import IsOnWhatsAppResponse

    from workers.transports.neonize.registry import REGISTRY
    from workers.transports.neonize.transport import NeonizeTransport

    sent: list[str] = []
    asked: list[tuple[str, ...]] = []

    class Client:
        upload = FakeUpload()

        def send_message(self, jid: Any, message: Any) -> Any:
            assert REGISTRY._readers >= 1, "a Go call outside the registry lock"
            if jid.User in ("5511988887777", "4915112345678"):
                raise RuntimeError(f"no LID found for {jid.User}@s.whatsapp.net from server")
            sent.append(f"{jid.User}@{jid.Server}")
            return SimpleNamespace(ID=f"WA-{len(sent)}")

        def is_on_whatsapp(self, *numbers: str) -> list[IsOnWhatsAppResponse]:
            assert REGISTRY._readers >= 1, "a Go call outside the registry lock"
            asked.append(numbers)
            return [IsOnWhatsAppResponse(Query=numbers[0], IsIn=True,
                                         JID=JID(User="551188887777", Server="s.whatsapp.net"))]

    session = connected_session(client=Client())
    transport = NeonizeTransport(SimpleNamespace(owner=True, get=lambda i: session), timeout=5,  # type: ignore[arg-type]
                                 threads=2)
    instance_id = uuid.uuid4()

    def message(phone: str, text: str) -> OutgoingMessage:
        return OutgoingMessage(zaap_id=uuid.uuid4().hex, instance_id=instance_id, phone=phone,
                               message_type="text", payload={"message": text})

    assert transport.send(message("5511988887777", "first")) == "WA-1"
    assert asked == [("+551188887777",)] and sent == ["551188887777@s.whatsapp.net"]
    assert transport.send(message("5511988887777", "second")) == "WA-2"
    assert len(asked) == 1, "the registered form is remembered"
    try:
        transport.send(message("4915112345678", "not on WhatsApp"))
    except PermanentSendError as error:
        assert "no LID found" in str(error)
    else:
        raise AssertionError("a number with no account must fail for good")
    transport.close()
    print("number forms: sent to the registered form, remembered")


#: Stands in for WhatsApp's side of pairing.py's child: QR codes and then a Go call that never
#: returns (neonize after the QR window), or a phone code and a successful link.
FAKE_PAIRING_CHILD = """
import json, os, sys, time
def emit(**kw):
    print("WMQ-PAIRING " + json.dumps(kw), flush=True)
print("Press Ctrl+C to exit", flush=True)  # what Go prints there too
if os.environ.get("WMQ_PAIRING_PHONE"):
    assert os.environ["WMQ_PAIRING_PHONE"] == "5511988887777"
    emit(code="ABCD-EFGH")
    time.sleep(0.3)
    emit(paired="5511988887777:3@s.whatsapp.net")
    emit(connected=True)
    sys.exit(0)
for code in ("2@first", "2@second", "2@third"):
    emit(qr=code)
time.sleep(3600)
"""


def abandoned_call() -> None:
    """A send that does not answer in time is uncertain, and the instance sends nothing more until
    that call has returned; a disconnect after the frame went out is uncertain too."""
    import threading
    import time
    from types import SimpleNamespace

    from workers.transports.base import UncertainSendError
    from workers.transports.neonize.transport import NeonizeTransport

    release = threading.Event()
    outcome: dict[str, Any] = {"fail": None}

    class Client:
        upload = FakeUpload()

        def send_message(self, jid: Any, message: Any) -> Any:
            release.wait(10)
            if outcome["fail"]:
                raise RuntimeError(outcome["fail"])
            return SimpleNamespace(ID="WA-1")

    session = connected_session(client=Client())
    manager = SimpleNamespace(owner=True, get=lambda instance_id: session)
    transport = NeonizeTransport(manager, timeout=0.3, threads=4)  # type: ignore[arg-type]
    instance_id = uuid.uuid4()

    def message(n: int) -> OutgoingMessage:
        return OutgoingMessage(zaap_id=f"{n:032x}", instance_id=instance_id, phone="5511999999999",
                               message_type="text", payload={"message": f"m{n}"})

    try:
        transport.send(message(1))
    except UncertainSendError:
        pass
    else:
        raise AssertionError("a send that did not answer in time must be uncertain")
    for attempt in (message(1), message(2)):  # its retry, and the next message: both must wait
        try:
            transport.send(attempt)
        except InstanceDisconnected as error:
            assert "has not returned yet" in str(error), error
        else:
            raise AssertionError("the instance sent while an earlier call was still under way")
    release.set()
    deadline = time.monotonic() + 5
    while not all(a.future.done() for a in transport.abandoned.values()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert transport.send(message(2)) == "WA-1"
    outcome["fail"] = "websocket disconnected before message send returned response"
    try:
        transport.send(message(3))
    except UncertainSendError as error:
        assert "before message send returned" in str(error), error
    else:
        raise AssertionError("a disconnect after the frame went out must be uncertain")
    transport.close()
    print("abandoned call: the instance waited for it")


#: Every SlowClient made: released when a check ends, passed or failed, so that its hung calls
#: do not hold the process at exit (the helper pool's threads are joined there).
SLOW_CLIENTS: list[SlowClient] = []


class SlowClient:
    """A session's client whose calls take as long as the test says: `hang` holds a call until
    released (or forever), the network edge. Records the order of what it was asked."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.events = events if events is not None else []
        self.release = threading.Event()
        self.hang = {"send": False, "upload": False}
        self.sent = 0
        SLOW_CLIENTS.append(self)

    def upload(self, data: bytes, kind: MediaType) -> UploadResponse:
        self.events.append("upload")
        if self.hang["upload"]:
            self.release.wait()
        return FakeUpload()(data, kind)

    def send_message(self, jid: Any, message: Any) -> Any:
        from types import SimpleNamespace

        self.events.append("send")
        if self.hang["send"]:
            self.release.wait()
        self.sent += 1
        return SimpleNamespace(ID=f"WA-{self.sent}")


def blocked(transport: Any, message: OutgoingMessage) -> bool:
    """Whether the instance refuses to send because an earlier call is still out."""
    try:
        transport.send(message)
    except InstanceDisconnected as error:
        return "has not returned yet" in str(error)
    return False


def connected_session(**fields: Any) -> Any:
    """A connected session as the transport sees it (its client, and what it tells the session)."""
    from types import SimpleNamespace

    return SimpleNamespace(connected=True, state="connected", detail=None, delivered=lambda: None, **fields)


def transport_for(session: Any, **kwargs: Any) -> Any:
    from types import SimpleNamespace

    from workers.transports.neonize.transport import NeonizeTransport

    return NeonizeTransport(SimpleNamespace(owner=True, get=lambda _id: session), **kwargs)  # type: ignore[arg-type]


def text_message(instance_id: uuid.UUID, text: str, phone: str = "5511999999999", **kwargs: Any) -> OutgoingMessage:
    return OutgoingMessage(zaap_id=uuid.uuid4().hex, instance_id=instance_id, phone=phone, message_type="text",
                           payload={"message": text}, **kwargs)


def late_answer() -> None:
    """Issue 21 item 4: a send abandoned at the job timeout is uncertain *with the call*, which
    later answers with the message's id; the instance waits for it meanwhile, and no longer once
    whatsmeow's bound has passed, even if the call never returns."""
    import time

    from workers.transports.base import UncertainSendError

    client = SlowClient()
    session = connected_session(client=client, jid=None)
    transport = transport_for(session, timeout=0.2, threads=4, call_bound=1.5)
    instance_id = uuid.uuid4()
    client.hang["send"] = True
    started = time.monotonic()
    try:
        transport.send(text_message(instance_id, "slow"))
    except UncertainSendError as error:
        late, within = error.late, error.late_within
    else:
        raise AssertionError("a send that did not answer in time must be uncertain")
    assert late is not None and not late.done(), "the uncertain error carries the call, still out"
    assert 0 < within <= 1.5 - 0.2 + 0.05, within  # the bound, from when the call started
    assert blocked(transport, text_message(instance_id, "next")), "the instance sent while the call was out"
    client.release.set()
    assert late.result(timeout=5) == "WA-1", "the late call answers with the message's id"
    assert client.sent == 1 and time.monotonic() - started < 1.5
    wait_until(lambda: instance_id not in transport.abandoned, 10, "the returned call to be forgotten", interval=0.01)
    assert transport.send(text_message(instance_id, "next")) == "WA-2"

    # A call that never returns holds its instance until the bound, not forever.
    client.release.clear()
    other = uuid.uuid4()
    try:
        transport.send(text_message(other, "never"))
    except UncertainSendError as error:
        assert error.late is not None and error.late_within > 0
        never = error.late
    else:
        raise AssertionError("uncertain expected")
    bound_at = time.monotonic() + 1.5 - 0.2
    assert blocked(transport, text_message(other, "held"))
    client.hang["send"] = False  # the next call answers at once: it is sent once the instance is free
    wait_until(lambda: not blocked(transport, text_message(other, "after the bound")), 5,
               "the bound to pass", interval=0.01)
    assert time.monotonic() >= bound_at - 0.05, "freed before the bound"
    assert client.sent == 3 and not never.done(), "the instance was freed by the bound, the call never returned"
    transport.close()
    print("late answer: carried, waited for, bounded")


def claim_checked() -> None:
    """Issue 21 item 8's hook: the claim is checked right before each frame leaves, after the
    media was fetched and uploaded; a lost claim sends nothing and passes through untouched."""
    from types import SimpleNamespace

    from neonize.proto.Neonize_pb2 import IsOnWhatsAppResponse

    from workers.transports.base import ClaimLost

    events: list[str] = []
    client = SlowClient(events)
    session = connected_session(client=client, jid=None)
    transport = transport_for(session, timeout=5, threads=2)
    instance_id = uuid.uuid4()

    def lost() -> None:
        events.append("check")
        raise ClaimLost("rescued by another worker")

    image = {"image": data_uri("image/png", PNG)}
    try:
        transport.send(OutgoingMessage(zaap_id="a" * 32, instance_id=instance_id, phone="5511999999999",
                                       message_type="image", payload=image, before_write=lost))
    except ClaimLost as error:
        assert str(error) == "rescued by another worker", error
    else:
        raise AssertionError("a lost claim must stop the send")
    assert events == ["upload", "check"], events  # uploaded, checked, and no frame

    def counted() -> None:
        events.append("check")

    events.clear()
    assert transport.send(OutgoingMessage(zaap_id="b" * 32, instance_id=instance_id, phone="5511999999999",
                                          message_type="image", payload=image, before_write=counted)) == "WA-1"
    assert events == ["upload", "check", "send"], events

    # The number's other form: a second frame, checked again right before it.
    def send_message(jid: Any, message: Any) -> Any:
        events.append("send")
        if jid.User == "5511988887777":
            raise RuntimeError("no LID found for 5511988887777@s.whatsapp.net from server")
        return SimpleNamespace(ID="WA-other")

    client.send_message = send_message  # type: ignore[method-assign]
    client.is_on_whatsapp = lambda *numbers: [IsOnWhatsAppResponse(  # type: ignore[attr-defined]
        Query=numbers[0], IsIn=True, JID=JID(User="551188887777", Server="s.whatsapp.net"))]
    events.clear()
    assert transport.send(OutgoingMessage(zaap_id="c" * 32, instance_id=instance_id, phone="5511988887777",
                                          message_type="text", payload={"message": "hi"},
                                          before_write=counted)) == "WA-other"
    assert events == ["check", "send", "check", "send"], events

    # A check that fails for another reason (the database): nothing sent, retryable.
    def broken() -> None:
        raise OSError("database unreachable")

    from workers.transports.base import RetryableSendError

    events.clear()
    try:
        transport.send(text_message(instance_id, "x", before_write=broken))
    except RetryableSendError as error:
        assert "could not be checked" in str(error)
    else:
        raise AssertionError("a failed check must be retryable")
    assert "send" not in events
    transport.close()
    print("claim checked: once per frame, after the uploads; a lost claim sends nothing")


def bounded_calls() -> None:
    """Issue 21 item 6: an upload that never returns (neonize gives it no deadline) fails the
    send as retryable at the job timeout and holds its instance only until the bound; a restart
    (the session's client replaced) frees the instance at once; a 413 stays permanent."""
    import time
    from types import SimpleNamespace

    from workers.transports.base import RetryableSendError

    client = SlowClient()
    session = connected_session(client=client, jid=None)
    transport = transport_for(session, timeout=0.2, threads=4, call_bound=60, restart_grace=0.5)
    instance_id = uuid.uuid4()
    image = OutgoingMessage(zaap_id="d" * 32, instance_id=instance_id, phone="5511999999999",
                            message_type="image", payload={"image": data_uri("image/png", PNG)})
    client.hang["upload"] = True
    started = time.monotonic()
    try:
        transport.send(image)
    except RetryableSendError as error:
        assert "did not answer within 0.2s" in str(error), error
    else:
        raise AssertionError("an upload that hangs must fail the send as retryable")
    assert time.monotonic() - started < 2
    assert blocked(transport, text_message(instance_id, "next")), "the hung upload must hold its instance"
    # A restart: the session's client is replaced (sessions.py restart), the old one stopped: the
    # instance waits the grace a stopped client takes to end its calls, not the bound.
    session.client = SlowClient()
    replaced = time.monotonic()
    assert blocked(transport, text_message(instance_id, "at the restart"))
    wait_until(lambda: not blocked(transport, text_message(instance_id, "after the restart")), 5,
               "the restart to free the instance", interval=0.01)
    assert 0.4 <= time.monotonic() - replaced < 5
    assert instance_id not in transport.abandoned
    assert client.events == ["upload"] and session.client.events == ["send"] and session.client.sent == 1

    # Without a restart, the bound frees it.
    short = transport_for(session, timeout=0.2, threads=4, call_bound=0.8)
    session.client.hang["upload"] = True
    try:
        short.send(image)
    except RetryableSendError:
        pass
    assert blocked(short, text_message(instance_id, "held"))
    wait_until(lambda: not blocked(short, text_message(instance_id, "free")), 5, "the bound to pass", interval=0.01)

    # A 413 through the transport: permanent, with the reason.
    def refused(data: bytes, kind: MediaType) -> UploadResponse:
        raise Exception("upload failed with status code 413")

    session.client = SimpleNamespace(upload=refused, send_message=None)
    try:
        transport.send(OutgoingMessage(zaap_id="e" * 32, instance_id=uuid.uuid4(), phone="5511999999999",
                                       message_type="image", payload={"image": data_uri("image/png", PNG)}))
    except PermanentSendError as error:
        assert "refused the upload as too large" in str(error), error
    else:
        raise AssertionError("a 413 must be permanent")
    client.release.set()
    transport.close()
    short.close()
    print("bounded calls: retryable, held until the bound or a restart, 413 permanent")


if __name__ == "__main__":
    from service.logs import configure_logging

    configure_logging("WARNING")  # after neonize's import-time basicConfig
    try:
        globals()[sys.argv[1]]()
    finally:
        for slow in SLOW_CLIENTS:
            slow.release.set()

