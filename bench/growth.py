"""How the costs grow with the number of instances: enqueue, dispatch, one hot instance and
lateness at 100, 1,000 and 10,000 instances, in one run, and a plot of them.

    .venv/bin/python bench/growth.py [--sizes 100,1000,10000] [--messages 20000] [--hot 1000]
                                     [--seconds 10] [--spread 60] [--plot ../docs/growth.png]

For each size N, each on a fresh database with N instances:
1. Enqueue: HTTP into 1 API process (bench/enqueue.py's load, spread over the N instances)
   beside pgbench running the same `wmq_enqueue` (the ceiling), `seconds` each.
2. Dispatch: `messages` messages spread evenly over the N instances (so the work is the same at
   every size), drained by 1 worker × 8 threads; per-instance order checked.
3. One hot instance: a backlog of `hot` on one more instance, among the N idle ones.
4. Lateness: one message per instance, due at random over `spread` seconds (bench/lateness.py,
   100 ms poll, due-time waker on).
Prints one table and writes the plot (matplotlib) to `--plot`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drain import ENQUEUE_MANY, check_order, drain, queue_backlog
from enqueue import GENERATOR, load, number_instances, pgbench
from harness import Stack, create_instances, database, print_table, workdir
from lateness import run as lateness

WORKER_ENV = {"MESSAGE_QUEUE_WORKER_THREADS": 8, "LOG_LEVEL": "WARNING"}


def enqueue_at(work: Path, size: int, seconds: float) -> tuple[float, float]:
    """(HTTP enqueues/s into 1 API process, pgbench ceiling) over `size` instances."""
    with database(work / f"enqueue-{size}") as url:
        stack = Stack(url, work / f"enqueue-stack-{size}", {"LOG_LEVEL": "WARNING"})
        stack.start_api()
        try:
            instances = create_instances(stack, size)
            number_instances(url)
            http = load(GENERATOR, [str(stack.http.base_url)], instances, 16, seconds, work)
            return http, pgbench(url, work, size, 16, seconds)
        finally:
            stack.stop()


def dispatch_at(work: Path, size: int, messages: int, hot: int) -> dict[str, Any]:
    """Drain `messages` spread over `size` instances, then a hot backlog among them."""
    per_instance = max(1, messages // size)
    with database(work / f"dispatch-{size}") as url:
        stack = Stack(url, work / f"dispatch-stack-{size}", WORKER_ENV)
        stack.start_api()
        try:
            ids = queue_backlog(stack, size, per_instance)
            drained = drain(stack, size * per_instance, timeout=3600)
            ordered = check_order(stack, ids)
            stack.stop_process(stack.workers.pop())
            hot_instance = stack.create_instance(name="hot")["id"]
            stack.all(ENQUEUE_MANY, {"instance": hot_instance, "count": hot})
            hot_drained = drain(stack, hot, timeout=3600, instance=hot_instance)
            ordered = ordered and check_order(stack, [*ids, hot_instance])
        finally:
            stack.stop()
    return {"dispatch msg/s": drained.rate, "dispatch CPU ms/msg": drained.worker_cpu_ms + drained.postgres_cpu_ms,
            "hot msg/s": hot_drained.rate, "order": "kept" if ordered else "BROKEN"}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["instances"] for r in rows]
    fig, (rates, late) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in [("enqueue ceiling/s", "enqueue ceiling (pgbench)", "k--"),
                              ("enqueue HTTP/s", "enqueue over HTTP, 1 API process", "C0-o"),
                              ("dispatch msg/s", "dispatch, many instances", "C1-o"),
                              ("hot msg/s", "one hot instance", "C2-o")]:
        rates.plot(sizes, [r[key] for r in rows], style, label=label)
    rates.set(xscale="log", yscale="log", xlabel="instances", ylabel="per second", title="Throughput")
    rates.legend(fontsize=8)
    for key, style in [("lateness p50 ms", "C0-o"), ("lateness p99 ms", "C3-o"), ("lateness max ms", "C3:")]:
        late.plot(sizes, [r[key] for r in rows], style, label=key.replace("lateness ", ""))
    late.axhline(50, color="grey", linewidth=0.8, linestyle="--", label="goal: p99 ≤ 50 ms")
    late.set(xscale="log", xlabel="instances (one delayed message each)", ylabel="send − due (ms)",
             title="Lateness of delayed messages")
    late.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--hot", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--spread", type=float, default=60)
    parser.add_argument("--plot", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "growth.png")
    args = parser.parse_args()
    rows = []
    with workdir() as work:
        for size in map(int, args.sizes.split(",")):
            http, ceiling = enqueue_at(work, size, args.seconds)
            dispatched = dispatch_at(work, size, args.messages, args.hot)
            late = lateness(work, size, args.spread, "100ms", True)
            rows.append({"instances": size, "enqueue HTTP/s": http, "enqueue ceiling/s": ceiling,
                         "enqueue vs ceiling": f"{http / ceiling:.0%}", **dispatched,
                         "lateness p50 ms": late["p50 ms"], "lateness p99 ms": late["p99 ms"],
                         "lateness max ms": late["max ms"], "sent early": late["sent early"]})
    print_table(f"Growth: enqueue ({GENERATOR}, 16 clients, 1 API process), dispatch of {args.messages} messages "
                f"spread over the instances, a hot backlog of {args.hot} among them, one delayed message each", rows)
    print(json.dumps(rows))
    plot(rows, args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
