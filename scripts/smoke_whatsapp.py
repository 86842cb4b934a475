"""Real-phone smoke test: pair this machine with WhatsApp, then send one message of each type.

    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999                  # pair by QR code
    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999 --pair-phone 5511988887777
    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999 --audio a.mp3 --video v.mp4

It runs the service's own WhatsApp parts: pairing in a child process (the QR codes are drawn in
the terminal as they change; with --pair-phone an 8-character code is printed instead, to type
on that phone under Linked devices → Link with phone number), the session and its connection
states, and the transport's send path (builders, media conversion, error mapping). Sessions are
kept in a local SQLite store (--store, kept between runs, so pairing happens once). Every type
is sent to the first argument, with the WhatsApp id or the error printed for each; a reaction 👍
goes to the text message sent first.

It needs WhatsApp's servers, so it cannot run in CI or on a machine without internet.

    .venv/bin/python scripts/smoke_whatsapp.py 5511999999999 --dry-run

After the samples, a backlog of five texts goes out while the session restarts after the second
(a worker's restart under load): each waits, as the queue's head would, until the session is back,
and they arrive in order, none skipped or repeated. With --cold-phone, one text goes to a number
this account has never written to: if WhatsApp answers with its reach-out time-lock (463), the
session shows `restricted` with the reason and the time of the next try, and the script says so.

With --dry-run it needs neither: every message is built as above (the same samples, builders
and send loop, the JID from the phone given), with a stand-in for WhatsApp's media upload, and
described instead of sent; the backlog runs against a stand-in session that restarts. Nothing is
connected, paired or stored. The test suite runs it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()

SAMPLES: list[tuple[str, dict[str, object]]] = [
    ("text", {"message": "wmq smoke test: text"}),
    ("image", {"image": PNG_URI, "caption": "wmq: image"}),
    ("document", {"document": base64.b64encode(b"wmq smoke test document\n").decode(), "extension": "txt",
                  "fileName": "wmq-smoke", "caption": "wmq: document"}),
    ("location", {"latitude": -23.5505, "longitude": -46.6333, "title": "Praça da Sé", "address": "São Paulo"}),
    ("contact", {"contactName": "WMQ Smoke", "contactPhone": "5511999999999"}),
    ("button-list", {"message": "wmq: buttons", "buttonList": {"buttons": [{"id": "1", "label": "Yes"},
                                                                          {"id": "2", "label": "No"}]}}),
    ("option-list", {"message": "wmq: options", "optionList": {"title": "Menu", "buttonLabel": "Open",
                                                               "options": [{"id": "a", "title": "First"}]}}),
    ("sticker", {"sticker": PNG_URI}),
    ("poll", {"message": "wmq: poll", "poll": [{"name": "Yes"}, {"name": "No"}], "pollMaxOptions": 1}),
    ("link", {"message": "wmq: link", "linkUrl": "https://github.com", "title": "GitHub",
              "linkDescription": "a link preview", "image": PNG_URI}),
]


def generated(kind: str) -> bytes:
    """A short sample made by ffmpeg (the binary the product uses): a tone, or a test pattern."""
    from workers.transports.neonize import mediainfo

    exe = mediainfo.ffmpeg()
    if exe is None:
        raise SystemExit("no ffmpeg: pass --audio and --video files")
    args = (["-i", "sine=frequency=440:duration=2", "-f", "mp3"] if kind == "audio" else
            ["-i", "testsrc=duration=2:size=320x240:rate=10", "-c:v", "libx264", "-pix_fmt", "yuv420p",
             "-movflags", "frag_keyframe+empty_moov", "-f", "mp4"])
    return subprocess.run([exe, "-v", "error", "-f", "lavfi", *args, "-"], capture_output=True, check=True).stdout


def stand_in_upload(data: bytes, kind: Any) -> Any:
    """What `client.upload` answers, made up here: the dry run's network edge."""
    from neonize.proto.Neonize_pb2 import UploadResponse

    print(f"{'':12} upload of {len(data)} bytes as {kind.name} (stand-in)")
    digest = hashlib.sha256(data).digest()
    return UploadResponse(url=f"https://mmg.whatsapp.net/dry-run/{kind.name}", DirectPath=f"/dry-run/{kind.name}",
                          MediaKey=bytes(32), FileEncSHA256=digest, FileSHA256=digest, FileLength=len(data))


def send_all(samples: list[tuple[str, dict[str, object]]], send: Callable[[str, dict[str, object]], str]) -> int:
    """Hand each sample to `send`, which says what became of it; returns how many failed. The
    reaction goes last, to the first message sent."""
    from workers.transports.neonize.errors import map_error

    failures, first_id = 0, None
    for kind, payload in samples:
        try:
            outcome = send(kind, payload)
            print(f"{kind:12} {outcome}")
            first_id = first_id or outcome.rsplit(" ", 1)[-1]
        except Exception as error:
            failures += 1
            print(f"{kind:12} FAILED: {map_error(error, sending=True)}", file=sys.stderr)
    if first_id:
        try:
            print(f"{'reaction':12} {send('reaction', {'reaction': '👍', 'messageId': first_id, 'fromMe': True})}")
        except Exception as error:
            failures += 1
            print(f"{'reaction':12} FAILED: {map_error(error, sending=True)}", file=sys.stderr)
    return failures


class SqliteStore:
    """The session store of the service (workers/transports/neonize/store.py `Store`), in a
    local SQLite file: neonize picks SQLite for a name that is not a PostgreSQL URL."""

    def __init__(self, path: str) -> None:
        self.path = path

    def url(self, key: str) -> str:
        return self.path

    def device_exists(self, jid: str) -> bool:
        return jid in self.devices()

    def devices(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        with sqlite3.connect(self.path) as conn:
            try:
                return [row[0] for row in conn.execute("SELECT jid FROM whatsmeow_device")]
            except sqlite3.Error:
                return []

    def release(self, key: str) -> None:
        pass


def pair(store: SqliteStore, phone: str | None) -> str:
    """Run the service's pairing attempt (a child process) until the phone has linked it."""
    import segno

    from workers.transports.neonize.pairing import PairingAttempt

    done = threading.Event()
    outcome: dict[str, Any] = {}

    def report(line: dict[str, Any]) -> None:
        if "qr" in line:
            print("\nscan with WhatsApp → Settings → Linked devices → Link a device (it changes every ~20 s):")
            segno.make_qr(line["qr"], error="L").terminal(compact=True)
        elif "code" in line:
            print(f"\non {phone}: WhatsApp → Linked devices → Link with phone number, type {line['code']}")
        elif "paired" in line:
            outcome["jid"] = line["paired"]
            print(f"paired as {line['paired']}")
        elif "failed" in line:
            outcome["failed"] = line["failed"]
        elif "exit" in line:
            done.set()

    PairingAttempt(store_url=store.path, key="smoke", phone=phone, proxy=os.environ.get("WHATSAPP_PROXY"),
                   report=report, deadline=170)
    done.wait()
    if "jid" not in outcome:
        raise SystemExit(f"pairing failed: {outcome.get('failed', 'the attempt ended (QR codes expired?)')}")
    return str(outcome["jid"])


BACKLOG = 5


def send_backlog(send_one: Callable[[str], str], restart: Callable[[], None], wait: float = 120.0) -> list[str]:
    """Five texts in order, the session restarted after the second: each waits while the session
    is not connected (InstanceDisconnected: nothing was sent), as the queue's head would."""
    from workers.transports.base import InstanceDisconnected

    ids: list[str] = []
    for n in range(1, BACKLOG + 1):
        if n == 3:
            print("backlog: restarting the session")
            restart()
        text = f"wmq smoke test: backlog {n}/{BACKLOG}"
        deadline = time.monotonic() + wait
        while True:
            try:
                ids.append(send_one(text))
            except InstanceDisconnected as error:
                if str(error).startswith("restricted:") or time.monotonic() > deadline:
                    print(f"backlog {n}/{BACKLOG}: not sent: {error}")
                    return ids
                print(f"backlog {n}/{BACKLOG}: waiting ({error})")
                time.sleep(1)
                continue
            print(f"backlog {n}/{BACKLOG}: sent, WhatsApp id {ids[-1]}")
            break
    return ids


def dry_backlog() -> int:
    """The backlog against a stand-in session that is down for a moment after its restart."""
    from workers.transports.base import InstanceDisconnected

    down_until = [0.0]

    def send_one(text: str) -> str:
        if time.monotonic() < down_until[0]:
            raise InstanceDisconnected("connecting: the session is restarting")
        return f"DRY-RUN-{text.rpartition(' ')[2]}"

    def restart() -> None:
        down_until[0] = time.monotonic() + 1.5

    return 0 if len(send_backlog(send_one, restart, wait=10)) == BACKLOG else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phone", help="destination, digits with country code")
    parser.add_argument("--store", default="smoke.sqlite3", help="session store (SQLite file)")
    parser.add_argument("--pair-phone", help="pair by phone code for this number instead of the QR code")
    parser.add_argument("--audio", help="an audio file for the voice note (default: a generated tone)")
    parser.add_argument("--video", help="a video file (default: a generated test pattern)")
    parser.add_argument("--cold-phone", help="also send one text to a number this account never wrote to"
                                             " (shows WhatsApp's reach-out time-lock, 463, if it is on)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build every message with a stand-in upload and send nothing: no phone, no network")
    args = parser.parse_args()

    from workers.transports.neonize.messages import build_message
    from workers.transports.neonize.transport import to_jid_text

    samples = list(SAMPLES)
    for kind, path in (("audio", args.audio), ("video", args.video)):
        data = open(path, "rb").read() if path else generated(kind)  # noqa: SIM115 - read whole at once
        samples.append((kind, {kind: base64.b64encode(data).decode()}))
    to = to_jid_text(args.phone)

    if args.dry_run:
        print(f"dry run: {len(samples) + 1} messages for {to}, built and not sent")

        def describe(kind: str, payload: dict[str, object]) -> str:
            message = build_message(kind, payload, upload=stand_in_upload, to=to)
            fields = ", ".join(field.name for field, _ in message.ListFields())
            return f"built {fields} ({message.ByteSize()} bytes), not sent, id DRY-RUN"
        failures = send_all(samples, describe)
        return 1 if failures or dry_backlog() else 0

    from workers.transports.base import OutgoingMessage
    from workers.transports.neonize.sessions import Session
    from workers.transports.neonize.transport import NeonizeTransport

    store = SqliteStore(os.path.abspath(args.store))
    jid = next(iter(store.devices()), None) or pair(store, args.pair_phone)
    instance_id = uuid.uuid4()
    connected = threading.Event()

    def listener(_: uuid.UUID, state: str, detail: str | None, extra: dict[str, Any]) -> None:
        print(f"session: {state}{f' ({detail})' if detail else ''}")
        if state == "connected":
            connected.set()

    session = Session(instance_id, store, jid, listener, proxy=os.environ.get("WHATSAPP_PROXY"))  # type: ignore[arg-type]
    session.start()
    if not connected.wait(120):
        print("not connected after 2 minutes", file=sys.stderr)
        return 1
    holder = type("Holder", (), {"owner": True, "get": staticmethod(lambda _: session)})()
    transport = NeonizeTransport(holder, timeout=60, threads=2)  # type: ignore[arg-type]

    def send(kind: str, payload: dict[str, object]) -> str:
        transport.send_presence(instance_id, args.phone, "recording" if kind == "audio" else "composing")
        time.sleep(1)
        message = OutgoingMessage(zaap_id=uuid.uuid4().hex, instance_id=instance_id, phone=args.phone,
                                  message_type=kind, payload=payload)
        return f"sent, WhatsApp id {transport.send(message)}"

    failures = send_all(samples, send)

    def send_text(text: str, phone: str = args.phone) -> str:
        return transport.send(OutgoingMessage(zaap_id=uuid.uuid4().hex, instance_id=instance_id, phone=phone,
                                              message_type="text", payload={"message": text}))

    if len(send_backlog(send_text, session.restart)) < BACKLOG:
        failures += 1
    if args.cold_phone:
        try:
            print(f"cold contact: sent, WhatsApp id {send_text('wmq smoke test: a new contact', args.cold_phone)}")
        except Exception as error:  # a 463 says `restricted: …`, with the next try
            print(f"cold contact: not sent: {error}; session {session.state}: {session.detail}")
    transport.close()
    session.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    # Go reads NEONIZE_BOT_TAG from the environment the process started with: start again with it
    # off, or every one-to-one message would carry the bot label (service/cli.py does the same).
    if not os.environ.get("NEONIZE_BOT_TAG", "").strip():
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "NEONIZE_BOT_TAG": "off"})
    sys.exit(main())
