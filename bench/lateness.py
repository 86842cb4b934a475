"""Lateness of delayed messages: how long after its due time each one is sent.

    .venv/bin/python bench/lateness.py [--instances 500] [--spread 60]

`instances` instances get one message each, due at random times spread over `spread` seconds;
lateness = the simulator's send start − the message's due time (`available_at`). Measured at a
100 ms and a 1 s poll interval, with and without the due-time waker. No message may go early.
"""

from __future__ import annotations

import argparse
import random

from harness import Stack, create_instances, database, percentile, print_table, wait_until, workdir

ENQUEUE = """
    SELECT wmq_enqueue(md5(random()::text || clock_timestamp()::text), %(instance)s, 'text', '5511999999999',
                       '{"message": "late?"}', %(delay_ms)s, 0, 0, NULL, 3, 'whatsapp', 'deliver')
"""


def run(work: object, instances: int, spread: float, poll: str, wakeup: bool) -> dict[str, object]:
    with database(work / f"db-{poll}-{wakeup}") as url:  # type: ignore[operator]
        stack = Stack(url, work / f"stack-{poll}-{wakeup}", {  # type: ignore[operator]
            "LOG_LEVEL": "WARNING", "MESSAGE_QUEUE_WORKER_THREADS": 8, "MESSAGE_QUEUE_POLL_INTERVAL": poll,
            "MESSAGE_QUEUE_DUE_WAKEUP": str(wakeup).lower()})
        stack.start()
        try:
            rng = random.Random(1)
            created = create_instances(stack, instances)
            for instance in created:
                stack.all(ENQUEUE, {"instance": instance["id"], "delay_ms": round((2 + rng.random() * spread) * 1000)})
            wait_until(lambda: stack.one("SELECT count(*) AS n FROM messages WHERE status = 'completed'")["n"]
                       == instances, spread + 120, "every message to be sent", interval=0.5)
            rows = stack.all("""
                SELECT EXTRACT(EPOCH FROM e.started_at - m.available_at) * 1000 AS late_ms
                  FROM messages m JOIN simulator_events e ON e.zaap_id = m.zaap_id AND e.kind = 'send'""")
        finally:
            stack.stop()
    late = [float(r["late_ms"]) for r in rows]
    return {"poll": poll, "due-time waker": "on" if wakeup else "off", "p50 ms": percentile(late, 50),
            "p99 ms": percentile(late, 99), "max ms": max(late), "sent early": sum(1 for x in late if x < 0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--spread", type=float, default=60)
    args = parser.parse_args()
    with workdir() as work:
        rows = [run(work, args.instances, args.spread, poll, wakeup)
                for poll in ("100ms", "1s") for wakeup in (False, True)]
    print_table(f"Lateness: {args.instances} instances, due over {args.spread:g} s, 1 worker × 8 threads", rows)


if __name__ == "__main__":
    main()
