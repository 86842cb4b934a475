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
import uuid
from typing import Any

from google.protobuf.message import Message as Proto
from neonize.events import EVENT_TO_INT, ConnectedEv, DisconnectedEv, LoggedOutEv, PairStatusEv, QREv
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, UploadResponse
from neonize.utils.enum import MediaType

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


def message_building() -> None:
    from service.core.message_types import TYPES
    from workers.transports.neonize.messages import BUILDERS

    # The message-type table and the builders name the same types: a new type is both.
    assert set(BUILDERS) == set(TYPES), set(BUILDERS) ^ set(TYPES)
    upload = FakeUpload()

    text = build_message("text", {"message": "Olá!"}, upload)
    assert text.conversation == "Olá!"

    image = build_message("image", {"image": data_uri("image/png", PNG), "caption": "look", "viewOnce": True},
                          upload).imageMessage
    assert (image.mimetype, image.caption, image.viewOnce) == ("image/png", "look", True)
    assert (image.URL, image.directPath, image.fileLength) == ("https://mmg.whatsapp.net/MediaImage",
                                                               "/v/MediaImage", len(PNG))
    assert image.mediaKey == b"k" * 32 and image.fileSHA256 == b"s" * 32 and image.fileEncSHA256 == b"e" * 32
    assert upload.calls[-1] == (PNG, MediaType.MediaImage)

    voice = build_message("audio", {"audio": data_uri("audio/ogg", b"OggS voice")}, upload).audioMessage
    assert (voice.PTT, voice.mimetype, voice.fileLength) == (True, "audio/ogg", 10)
    assert upload.calls[-1][1] == MediaType.MediaAudio
    song = build_message("audio", {"audio": data_uri("audio/mpeg", b"ID3"), "ptt": False}, upload).audioMessage
    assert song.PTT is False

    video = build_message("video", {"video": data_uri("video/mp4", b"\0\0\0 ftypmp42"), "caption": "clip"},
                          upload).videoMessage
    assert (video.mimetype, video.caption, video.URL) == ("video/mp4", "clip", "https://mmg.whatsapp.net/MediaVideo")

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

    buttons = build_message("button-list", {"message": "Choose", "buttonList": {
        "buttons": [{"id": "yes", "label": "Yes"}, {"label": "No"}]}}, upload).buttonsMessage
    assert buttons.contentText == "Choose"
    assert [(b.buttonID, b.buttonText.displayText) for b in buttons.buttons] == [("yes", "Yes"), ("2", "No")]

    options = build_message("option-list", {"message": "Menu", "optionList": {
        "title": "Today", "buttonLabel": "Open", "options": [
            {"id": "a", "title": "Pizza", "description": "large"}, {"title": "Soup"}]}}, upload).listMessage
    assert (options.description, options.buttonText, options.title) == ("Menu", "Open", "Today")
    assert [(r.rowID, r.title, r.description) for r in options.sections[0].rows] == [
        ("a", "Pizza", "large"), ("2", "Soup", "")]

    for message_type, payload, complaint in (
        ("image", {"caption": "no image"}, "image is missing"),
        ("sticker", {"sticker": "x"}, "unsupported message type"),
        ("button-list", {"message": "m", "buttonList": {"buttons": []}}, "buttons is empty"),
        ("contact", {"contactName": "Ana", "contactPhone": "none"}, "no digits"),
    ):
        try:
            build_message(message_type, payload, upload)
        except PermanentSendError as error:
            assert complaint in str(error), error
        else:
            raise AssertionError(f"{message_type} {payload} should be refused")
    print("message building: every type checked")


def push(client: Any, event: Proto) -> None:
    """Through the client's real dispatcher, as the Go side delivers events."""
    data = event.SerializePartialToString()
    buffer = ctypes.create_string_buffer(data, len(data))
    client.event.execute(0, ctypes.addressof(buffer), len(data), EVENT_TO_INT[type(event)])


def session_events() -> None:
    from service.core import Core, instances
    from service.core.sessions import SessionHost
    from service.db import fetch_one, make_pool
    from service.settings import Settings
    from workers.transports.neonize.sessions import Session
    from workers.transports.neonize.store import device_exists, init_store
    from workers.transports.neonize.transport import NeonizeTransport

    database_url = os.environ["DATABASE_URL"]
    pool = make_pool(database_url, max_size=4)
    core = Core(pool, Settings(message_queue_min_jitter=0, message_queue_max_jitter=0))
    instance = instances.create(core, transport="neonize")
    host = SessionHost(core, database_url, uuid.uuid4())
    seen: list[str] = []

    def listener(instance_id: uuid.UUID, state: str, detail: str | None, extra: dict[str, Any]) -> None:
        seen.append(state)
        host.record(instance_id, state, detail, **extra)

    def row() -> dict[str, Any]:
        found = fetch_one(pool, "SELECT * FROM instances WHERE id = %(id)s", {"id": instance.id})
        assert found is not None
        return found

    store = init_store(database_url, "whatsmeow")
    # A stored JID whose device is not in the store (whatsmeow would panic on it): pair anew.
    stale = Session(instance.id, store, "5511988887777:12@s.whatsapp.net", lambda *a: None,
                    device_exists=lambda jid: device_exists(database_url, "whatsmeow", jid))
    assert stale.jid is None and stale.client.new_device

    session = Session(instance.id, store, None, listener)
    client = session.client

    push(client, QREv(Codes=["2@first-code", "2@second-code"]))
    assert (row()["connection_state"], row()["qr_code"]) == ("qr", "2@first-code")
    phone_jid = JID(User="5511988887777", Server="s.whatsapp.net", RawAgent=0, Device=12, Integrator=0)
    push(client, PairStatusEv(ID=phone_jid, BusinessName="", Platform="android", Status=PairStatusEv.SUCCESS))
    assert (row()["connection_state"], row()["whatsapp_jid"], row()["qr_code"]) == (
        "paired", "5511988887777:12@s.whatsapp.net", None)
    push(client, ConnectedEv())
    assert row()["connection_state"] == "connected" and session.connected
    push(client, DisconnectedEv())
    assert row()["connection_state"] == "disconnected" and not session.connected
    push(client, ConnectedEv())
    push(client, LoggedOutEv(Reason=ConnectFailureReason.Value("LOGGED_OUT")))
    assert (row()["connection_state"], row()["whatsapp_jid"]) == ("logged_out", None)
    assert "pair again" in row()["connection_detail"]
    assert seen == ["qr", "paired", "connected", "disconnected", "connected", "logged_out"]

    class Holder:
        owner = True

        def get(self, instance_id: uuid.UUID) -> Session | None:
            return session if instance_id == instance.id else None

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
    print("session events: qr → paired → connected → disconnected → logged out")


def abandoned_call() -> None:
    """A send that does not answer in time is uncertain, and the instance sends nothing more until
    that call has returned; a failure after the send started is uncertain too."""
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

    session = SimpleNamespace(connected=True, state="connected", detail=None, client=Client())
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
    while not all(f.done() for f in transport.abandoned.values()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert transport.send(message(2)) == "WA-1"
    outcome["fail"] = "server returned error 500"
    try:
        transport.send(message(3))
    except UncertainSendError as error:
        assert "after it started" in str(error), error
    else:
        raise AssertionError("a failure after the send started must be uncertain")
    transport.close()
    print("abandoned call: the instance waited for it")


if __name__ == "__main__":
    from service.logs import configure_logging

    configure_logging("WARNING")  # after neonize's import-time basicConfig
    globals()[sys.argv[1]]()
