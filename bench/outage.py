"""Issue 11's experiment: messages sent twice by live workers when PostgreSQL goes away.

    .venv/bin/python bench/outage.py [--instances 50] [--per-instance 30] [--outage 5,20] [--runs 2]

Three worker processes and the API on a PostgreSQL of its own, heartbeat TTL 8 s; every instance
posts a message every 0.5 s (a send takes 100 ms in the simulator) until it has posted
`per-instance`; a few seconds in, PostgreSQL is stopped (`pg_ctl stop -m fast`) for the outage
and started again. Then every accepted message must be sent: lost, order violations and
duplicate sends are counted from the simulator's record. No worker dies, so any duplicate is a
live worker's message sent twice.
"""

from __future__ import annotations

import argparse
import collections
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from harness import Stack, print_table, workdir

from tests.outage import Database  # importable once harness has put the repository on the path

ENV = {"MESSAGE_QUEUE_HEARTBEAT_TTL": "8s", "MESSAGE_QUEUE_HEARTBEAT_INTERVAL": "2s",
       "MESSAGE_QUEUE_LEASE_INTERVAL": "1s", "MESSAGE_QUEUE_MAINTENANCE_INTERVAL": "2s",
       "MESSAGE_QUEUE_JOB_TIMEOUT": "5s", "LOG_LEVEL": "WARNING"}


def sender(base: str, instance: dict[str, Any], count: int, accepted: list[str], refused: list[int]) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        for n in range(count):
            started = time.monotonic()
            try:
                answer = http.post(f"/instances/{instance['id']}/token/{instance['token']}/send-text",
                                   json={"phone": "5511999999999", "message": f"m{n}"})
                if answer.status_code == 200:
                    accepted.append(answer.json()["zaapId"])
                else:
                    refused.append(answer.status_code)
            except httpx.TransportError:
                refused.append(0)
            time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))


def run(work: Path, instances: int, per_instance: int, outage: float) -> dict[str, Any]:
    database = Database(work / f"pg-{time.monotonic_ns()}")
    stack = Stack(database.url, work / f"stack-{time.monotonic_ns()}", ENV)
    try:
        stack.start(workers=3)
        created = [stack.create_instance() for _ in range(instances)]
        for instance in created:
            stack.simulate(instance, latencyMs=100)
        accepted: dict[str, list[str]] = {i["id"]: [] for i in created}
        refused: list[int] = []
        threads = [threading.Thread(target=sender, args=(str(stack.http.base_url), i, per_instance, accepted[i["id"]],
                                                         refused)) for i in created]
        for thread in threads:
            thread.start()
        time.sleep(4)
        with database.down():
            time.sleep(outage)
        for thread in threads:
            thread.join()
        ids = [z for zs in accepted.values() for z in zs]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = stack.one("SELECT count(*) AS n FROM messages WHERE status = 'completed'")["n"]
            if done >= len(ids):
                break
            time.sleep(0.5)
        lost = order = duplicates = 0
        for instance in created:
            sent = [e["zaap_id"] for e in stack.sends(instance)]
            counts = collections.Counter(sent)
            duplicates += sum(n - 1 for n in counts.values())
            first = list(dict.fromkeys(sent))
            lost += len(set(accepted[instance["id"]]) - set(first))
            order += first != [z for z in accepted[instance["id"]] if z in counts]
        return {"outage s": outage, "accepted": len(ids), "refused": len(refused), "lost": lost,
                "order violations": order, "duplicate sends": duplicates}
    finally:
        stack.stop()
        database.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--per-instance", type=int, default=30)
    parser.add_argument("--outage", default="5,20")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with workdir() as work:
        for outage in (float(s) for s in args.outage.split(",")):
            for _ in range(args.runs):
                rows.append(run(work, args.instances, args.per_instance, outage))
                print(rows[-1], flush=True)
    print_table(f"PostgreSQL stopped while {args.instances} instances send, 3 workers, TTL 8 s", rows)


if __name__ == "__main__":
    main()
