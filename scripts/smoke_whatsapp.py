"""Real-phone smoke test: pair this machine with WhatsApp, then send one message of each type.

    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999 [--store smoke.sqlite3] [--pair-phone 55119…]

It uses the same message builders and error mapping as the neonize transport, with a local
SQLite session store (kept between runs, so pairing happens once). Scan the QR code printed in
the terminal with WhatsApp (Settings → Linked devices), or pass --pair-phone to get an
8-character code instead. Each message's WhatsApp id is printed as it is sent.

It needs WhatsApp's servers, so it cannot run in CI or on a machine without internet.

    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999 --dry-run [--audio a.ogg --video v.mp4]

With --dry-run it needs neither: every message is built as above (the same samples, builders
and send loop, the JID from the phone given), with a stand-in for WhatsApp's media upload, and
described instead of sent. Nothing is connected, paired or stored. The test suite runs it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import threading
from collections.abc import Callable
from typing import Any

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

SAMPLES: list[tuple[str, dict[str, object]]] = [
    ("text", {"message": "wmq smoke test: text"}),
    ("image", {"image": "data:image/png;base64," + base64.b64encode(PNG).decode(), "caption": "wmq: image"}),
    ("document", {"document": base64.b64encode(b"wmq smoke test document\n").decode(), "extension": "txt",
                  "fileName": "wmq-smoke", "caption": "wmq: document"}),
    ("location", {"latitude": -23.5505, "longitude": -46.6333, "title": "Praça da Sé", "address": "São Paulo"}),
    ("contact", {"contactName": "WMQ Smoke", "contactPhone": "5511999999999"}),
    ("button-list", {"message": "wmq: buttons", "buttonList": {"buttons": [{"id": "1", "label": "Yes"},
                                                                          {"id": "2", "label": "No"}]}}),
    ("option-list", {"message": "wmq: options", "optionList": {"title": "Menu", "buttonLabel": "Open",
                                                               "options": [{"id": "a", "title": "First"}]}}),
]


def stand_in_upload(data: bytes, kind: Any) -> Any:
    """What `client.upload` answers, made up here: the dry run's network edge."""
    from neonize.proto.Neonize_pb2 import UploadResponse

    print(f"{'':12} upload of {len(data)} bytes as {kind.name} (stand-in)")
    digest = hashlib.sha256(data).digest()
    return UploadResponse(url=f"https://mmg.whatsapp.net/dry-run/{kind.name}", DirectPath=f"/dry-run/{kind.name}",
                          MediaKey=bytes(32), FileEncSHA256=digest, FileSHA256=digest, FileLength=len(data))


def describe(message: Any) -> str:
    """A dry run's stand-in for the send: which WhatsApp message was built."""
    fields = ", ".join(field.name for field, _ in message.ListFields())
    return f"built {fields} ({message.ByteSize()} bytes), not sent"


def send_all(samples: list[tuple[str, dict[str, object]]], upload: Callable[[bytes, Any], Any],
             send: Callable[[Any], str]) -> int:
    """Build each sample with the transport's builders and hand it to `send`, which says what
    became of it; returns how many failed."""
    from workers.transports.neonize.errors import map_error
    from workers.transports.neonize.messages import build_message

    failures = 0
    for kind, payload in samples:
        try:
            message = build_message(kind, payload, upload=upload)
            print(f"{kind:12} {send(message)}")
        except Exception as error:
            failures += 1
            print(f"{kind:12} FAILED: {map_error(error)}", file=sys.stderr)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phone", help="destination, digits with country code")
    parser.add_argument("--store", default="smoke.sqlite3", help="session store (SQLite file)")
    parser.add_argument("--pair-phone", help="pair by phone code for this number instead of the QR code")
    parser.add_argument("--audio", help="an audio file to send as a voice note (optional)")
    parser.add_argument("--video", help="an mp4 file to send (optional)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build every message with a stand-in upload and send nothing: no phone, no network")
    args = parser.parse_args()

    from workers.transports.neonize.sessions import parse_jid
    from workers.transports.neonize.transport import to_jid_text

    samples = list(SAMPLES)
    for kind, path in (("audio", args.audio), ("video", args.video)):
        if path:
            with open(path, "rb") as media:
                samples.append((kind, {kind: base64.b64encode(media.read()).decode()}))
    jid = parse_jid(to_jid_text(args.phone))

    if args.dry_run:
        print(f"dry run: {len(samples)} messages for {jid.User}@{jid.Server}, built and not sent")
        return 1 if send_all(samples, stand_in_upload, describe) else 0

    from neonize.client import NewClient
    from neonize.events import ConnectedEv, PairStatusEv

    client = NewClient(args.store)
    connected = threading.Event()
    client.event(ConnectedEv)(lambda c, e: connected.set())
    client.event(PairStatusEv)(lambda c, e: print(f"paired as {e.ID.User}"))
    if args.pair_phone:
        def on_qr(c: NewClient, code: bytes) -> None:
            print("pair code:", c.PairPhone(args.pair_phone, True))
        client.event.qr(on_qr)
    threading.Thread(target=client.connect, daemon=True).start()
    if not connected.wait(300):
        print("not connected after 5 minutes", file=sys.stderr)
        return 1

    def send(message: Any) -> str:
        return f"sent, WhatsApp id {client.send_message(jid, message).ID}"

    failures = send_all(samples, client.upload, send)
    client.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
