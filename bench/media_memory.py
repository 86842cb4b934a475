"""Media in memory per worker: peak RSS while N sends of large media are built at once, without
and with the worker's media budget (workers/transports/neonize/media.py `BUDGET`).

    .venv/bin/python bench/media_memory.py [--sends 16] [--mb 40] [--hold 0.5]

Each mode runs in a fresh process (peak RSS is per process). A send is built as the transport
builds it (messages.build_message, a document): the fetch stands in for the download (a fresh
buffer of the size), the upload for neonize's (Go copies the bytes, then encrypts them into
another buffer) and holds them `--hold` seconds, as a network upload would.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child(sends: int, mb: int, hold: float, budget: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from neonize.proto.Neonize_pb2 import UploadResponse

    from workers.transports.base import InstanceDisconnected
    from workers.transports.neonize import messages
    from workers.transports.neonize.media import Media, MediaBudget

    if not budget:  # as before the budget: every send holds its media at once
        messages.BUDGET = MediaBudget(total=1 << 62, large=1 << 30, large_at=1 << 62, wait=60)
    size = mb * 1024 * 1024

    def fetch(_reference: str) -> Media:
        return Media(b"%PDF" + b"\x01" * (size - 4), "application/pdf")  # touched, as downloaded bytes are

    def upload(data: bytes, kind: Any) -> UploadResponse:
        copied = bytearray(data)  # cgo's copy into Go
        encrypted = bytes(copied) + b"\x00" * 16  # the encrypted, padded upload body
        time.sleep(hold)  # the upload on the wire
        return UploadResponse(url="https://mmg.whatsapp.net/x", FileLength=len(encrypted))

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcome = {"built": 0, "waited": 0}
    lock = threading.Lock()

    def send() -> None:
        try:
            messages.build_message("document", {"document": "https://example.com/x.pdf"}, upload, fetch=fetch)
            kind = "built"
        except InstanceDisconnected:
            kind = "waited"
        with lock:
            outcome[kind] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=send) for _ in range(sends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"budget": budget, "baseline_mib": baseline // 1024, "peak_mib": peak // 1024,
            "seconds": round(time.monotonic() - started, 2), **outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=16)
    parser.add_argument("--mb", type=int, default=40)
    parser.add_argument("--hold", type=float, default=0.5)
    parser.add_argument("--child", choices=("before", "after"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.sends, args.mb, args.hold, budget=args.child == "after")))
        return
    print(f"{args.sends} sends of {args.mb} MiB documents at once, uploads held {args.hold}s")
    print(f"{'mode':8} {'baseline MiB':>12} {'peak RSS MiB':>12} {'built':>6} {'waited':>6} {'seconds':>8}")
    for mode in ("before", "after"):
        result = subprocess.run([sys.executable, __file__, "--child", mode, "--sends", str(args.sends),
                                 "--mb", str(args.mb), "--hold", str(args.hold)],
                                capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{mode:8} {row['baseline_mib']:>12} {row['peak_mib']:>12} {row['built']:>6} {row['waited']:>6} "
              f"{row['seconds']:>8}")


if __name__ == "__main__":
    main()
