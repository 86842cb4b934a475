"""Webhook deliveries beside receivers that never answer: how fast a good receiver's deliveries
go, and how late, while other tenants' receivers hold posts for the whole `WEBHOOK_TIMEOUT`.

One worker, one run per `WEBHOOK_THREADS` value, back to back. `--slow` instances each point at
a receiver of their own (a distinct port: a distinct receiver, so the per-receiver cap does not
shield the others; only the threads and the circuit do) that accepts and never answers; the
`--instances` good ones point at one local receiver that answers 200 at once. Latency: arrival at
the receiver minus the delivery row's creation (its `momment`).

    .venv/bin/python bench/webhooks.py --threads 4,32 --slow 8 --instances 20 --per-instance 10
"""

from __future__ import annotations

import argparse
import http.server
import json
import threading
import time
from typing import Any

import psutil
from harness import Stack, create_instances, database, percentile, print_table, wait_until, workdir

from tests.listeners import Listener


class Good:
    """A receiver that answers 200 at once and records when each delivery arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        good = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                good.arrivals.append((time.time(), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def run(threads: int, args: argparse.Namespace) -> dict[str, Any]:
    with workdir() as work, database(work) as url:
        stack = Stack(url, work / "logs", {"WEBHOOK_THREADS": threads, "WEBHOOK_TIMEOUT": f"{args.timeout}s",
                                           "OUTBOUND_ALLOW": "127.0.0.1", "MESSAGE_QUEUE_WORKER_THREADS": 16})
        stack.start(workers=1)
        pits = [Listener("never") for _ in range(args.slow)]
        try:
            good = Good()
            instances = create_instances(stack, args.instances + args.slow)
            for n, instance in enumerate(instances):
                target = good.url if n < args.instances else f"http://127.0.0.1:{pits[n - args.instances].port}/hook"
                answer = stack.http.put(f"{stack.base(instance)}/update-webhook-delivery", json={"value": target})
                assert answer.status_code == 200, answer.text
            for instance in instances[args.instances:]:  # the slow ones first: they hold their posts
                for n in range(args.per_instance):
                    stack.send_text(instance, f"slow {n}")
            started = time.monotonic()
            for n in range(args.per_instance):
                for instance in instances[:args.instances]:
                    stack.send_text(instance, f"good {n}")
            expected = args.instances * args.per_instance
            wait_until(lambda: len(good.arrivals) >= expected, args.deadline, "every good delivery")
            elapsed = time.monotonic() - started
            latencies = [arrived - body["momment"] / 1000 for arrived, body in good.arrivals]
            rss = psutil.Process(stack.workers[0].pid).memory_info().rss / 2**20
            return {"WEBHOOK_THREADS": threads, "slow receivers": args.slow, "good deliveries": expected,
                    "deliveries/s": expected / elapsed, "latency p50 (ms)": percentile(latencies, 50) * 1000,
                    "latency p99 (ms)": percentile(latencies, 99) * 1000, "worker RSS (MiB)": rss}
        finally:
            stack.stop()
            for pit in pits:
                pit.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="4,32", help="WEBHOOK_THREADS values, one run each")
    parser.add_argument("--slow", type=int, default=8, help="instances whose receivers never answer")
    parser.add_argument("--instances", type=int, default=20, help="instances with a good receiver")
    parser.add_argument("--per-instance", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=2.0, help="WEBHOOK_TIMEOUT, seconds")
    parser.add_argument("--deadline", type=float, default=600.0)
    args = parser.parse_args()
    rows = [run(int(threads), args) for threads in args.threads.split(",")]
    print_table(f"Webhooks: a good receiver beside {args.slow} that never answer (timeout {args.timeout:g} s)", rows)


if __name__ == "__main__":
    main()
