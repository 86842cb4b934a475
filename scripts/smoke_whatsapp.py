"""Real-phone smoke test: pair this machine with WhatsApp, then send one message of each type.

    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999 [--store smoke.sqlite3] [--pair-phone 55119…]

It uses the same message builders and error mapping as the neonize transport, with a local
SQLite session store (kept between runs, so pairing happens once). Scan the QR code printed in
the terminal with WhatsApp (Settings → Linked devices), or pass --pair-phone to get an
8-character code instead. Each message's WhatsApp id is printed as it is sent.

It needs WhatsApp's servers, so it cannot run in CI or on a machine without internet.
"""

from __future__ import annotations

import argparse
import base64
import sys
import threading

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phone", help="destination, digits with country code")
    parser.add_argument("--store", default="smoke.sqlite3", help="session store (SQLite file)")
    parser.add_argument("--pair-phone", help="pair by phone code for this number instead of the QR code")
    parser.add_argument("--audio", help="an audio file to send as a voice note (optional)")
    parser.add_argument("--video", help="an mp4 file to send (optional)")
    args = parser.parse_args()

    from neonize.client import NewClient
    from neonize.events import ConnectedEv, PairStatusEv

    from workers.transports.neonize.errors import map_error
    from workers.transports.neonize.messages import build_message
    from workers.transports.neonize.sessions import parse_jid
    from workers.transports.neonize.transport import to_jid_text

    samples = list(SAMPLES)
    for kind, path in (("audio", args.audio), ("video", args.video)):
        if path:
            with open(path, "rb") as media:
                samples.append((kind, {kind: base64.b64encode(media.read()).decode()}))

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

    jid = parse_jid(to_jid_text(args.phone))
    failures = 0
    for kind, payload in samples:
        try:
            message = build_message(kind, payload, upload=client.upload)
            print(f"{kind:12} sent, WhatsApp id {client.send_message(jid, message).ID}")
        except Exception as error:
            failures += 1
            print(f"{kind:12} FAILED: {map_error(error)}", file=sys.stderr)
    client.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
