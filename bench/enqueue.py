"""Enqueue throughput over HTTP against the database's own ceiling for the same transaction.

    .venv/bin/python bench/enqueue.py [--seconds 10] [--clients 16] [--instances 100] [--generator wrk]

- HTTP: `clients` concurrent keep-alive clients posting send-text (one commit each, answer after
  commit) to 1 API process, then to 2 API processes (clients split between them). The load comes
  from `wrk` (a C client: `apt-get install wrk`) when it is installed, else from Python threads
  with httpx, which take a share of the same CPUs; the table says which.
- Ceiling: pgbench running exactly our enqueue statement (`SELECT wmq_enqueue(…)`) with the
  same number of clients, on the same database: what PostgreSQL alone can do.
No worker runs: this measures accepting, not sending.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from harness import ROOT, Stack, create_instances, database, print_table, workdir

PGBENCH = ROOT / ".venv/lib/python3.11/site-packages/pgserver/pginstall/bin/pgbench"

PGBENCH_SCRIPT = """\\set n random(1, {instances})
SELECT wmq_enqueue(md5(random()::text || clock_timestamp()::text), id, 'text', '5511999999999',
                   '{{"message": "bench"}}', 0, 0, 0, NULL, 3, 'whatsapp', 'deliver')
  FROM bench_instances WHERE n = :n;
"""


def http_load(bases: list[str], instances: list[dict[str, Any]], clients: int, seconds: float) -> float:
    """Requests/s of `clients` threads posting send-text for `seconds`."""
    done = [0] * clients
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def client(n: int) -> None:
        with httpx.Client(base_url=bases[n % len(bases)], timeout=30) as http:
            k = n
            while time.perf_counter() < stop:
                instance = instances[k % len(instances)]
                k += clients
                response = http.post(f"/instances/{instance['id']}/token/{instance['token']}/send-text",
                                     json={"phone": "5511999999999", "message": "bench"})
                if response.status_code != 200:
                    errors.append(response.text)
                    return
                done[n] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(done) / (time.perf_counter() - started)


WRK_SCRIPT = """\
local paths = {{{paths}}}
local body = '{{"phone": "5511999999999", "message": "bench"}}'
local headers = {{["Content-Type"] = "application/json"}}
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", paths[n % #paths + 1], headers, body)
end
"""


def wrk_load(bases: list[str], instances: list[dict[str, Any]], clients: int, seconds: float, work: Path) -> float:
    """Requests/s of `clients` wrk connections, split over the API processes (one wrk each, at
    once); any answer but 200 fails the run."""
    script = work / "send_text.lua"
    script.write_text(WRK_SCRIPT.format(paths=", ".join(
        f'"/instances/{i["id"]}/token/{i["token"]}/send-text"' for i in instances)))
    runs = [subprocess.Popen(["wrk", "-t1", f"-c{max(1, clients // len(bases))}", f"-d{seconds:g}s", "-s", str(script),
                              base], stdout=subprocess.PIPE, text=True) for base in bases]
    total = 0.0
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 60)
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        if run.returncode != 0 or not match or "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(out)
        total += float(match.group(1))
    return total


#: The load generator: wrk when installed.
GENERATOR = "wrk" if shutil.which("wrk") else "httpx"


def load(generator: str, bases: list[str], instances: list[dict[str, Any]], clients: int, seconds: float,
         work: Path) -> float:
    if generator == "wrk":
        return wrk_load(bases, instances, clients, seconds, work)
    return http_load(bases, instances, clients, seconds)


def number_instances(url: str) -> None:
    """`bench_instances`: the instances numbered 1..N, keyed, for pgbench's random pick."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_instances AS"
                     " SELECT row_number() OVER (ORDER BY created_at) AS n, id FROM instances")
        conn.execute("ALTER TABLE bench_instances ADD PRIMARY KEY (n)")


def pgbench(url: str, work: Path, instances: int, clients: int, seconds: float) -> float:
    script = work / "enqueue.sql"
    script.write_text(PGBENCH_SCRIPT.format(instances=instances))
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    result = subprocess.run(
        [str(PGBENCH), "-n", "-f", str(script), "-c", str(clients), "-j", "2", "-T", str(int(seconds)),
         "-h", str(params.get("host", "")), "-U", str(params.get("user", "postgres")), str(params["dbname"])],
        capture_output=True, text=True, timeout=seconds + 120)
    match = re.search(r"tps = ([\d.]+)", result.stdout)
    if not match:
        raise RuntimeError(result.stdout + result.stderr)
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--generator", choices=["wrk", "httpx"], default=GENERATOR)
    args = parser.parse_args()
    with workdir() as work, database(work / "db") as url:
        first = Stack(url, work / "api1", {"LOG_LEVEL": "WARNING"})
        second = Stack(url, work / "api2", {"LOG_LEVEL": "WARNING"})
        first.start_api()
        try:
            instances = create_instances(first, args.instances)
            number_instances(url)
            one = load(args.generator, [str(first.http.base_url)], instances, args.clients, args.seconds, work)
            second.start_api()
            two = load(args.generator, [str(first.http.base_url), str(second.http.base_url)], instances,
                       args.clients, args.seconds, work)
            ceiling = pgbench(url, work, args.instances, args.clients, args.seconds)
        finally:
            second.stop()
            first.stop()
    rows = [
        {"path": f"HTTP ({args.generator}), 1 API process", "enqueues/s": one, "vs ceiling": f"{one / ceiling:.0%}"},
        {"path": f"HTTP ({args.generator}), 2 API processes", "enqueues/s": two, "vs ceiling": f"{two / ceiling:.0%}"},
        {"path": "pgbench, the same wmq_enqueue statement (ceiling)", "enqueues/s": ceiling, "vs ceiling": "100%"},
    ]
    print_table(f"Enqueue: {args.clients} clients, {args.instances} instances, {args.seconds:g} s each", rows)
    print(json.dumps({"one": one, "two": two, "ceiling": ceiling}))


if __name__ == "__main__":
    main()
