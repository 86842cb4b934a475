"""A worker that stood still writes nothing it had not yet written (issue 21, item 8), and a call
that answers after the job timeout completes its message once (item 4).

The simulator models a call as WhatsApp's goes: preparation (`prepareMs`: upload, encryption),
then the frame recorded, then the wait for the answer (`latencyMs`). Workers are SIGSTOPped past
the TTL, in turn, while each has sends in both phases, and resumed: their messages are rescued
and sent by the others meanwhile. What the contact sees, in the order it arrives (every frame,
not first sends only), must never show a message after a later one of its instance, and a message
twice only if its first frame had left before the freeze. Seeded: FREEZE_SEED=… reproduces a run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import httpx

from tests.stack import Stack, wait_until

PLAIN, SESSION = 6, 18
PER_INSTANCE = 50
PREPARE_MS, LATENCY_MS = 150, 150
#: Longer than the TTL (5 s) plus a maintenance round or two: every frozen claim is rescued.
FROZEN_S = 9.0
MIN_FREEZES, MAX_FREEZES = 3, 6


def post_backlog(stack: Stack, instances: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each instance's backlog, posted in order by a thread of its own (pacing 0.4 s a message)."""
    accepted: dict[str, list[str]] = {i["id"]: [] for i in instances}

    def post(instance: dict[str, Any]) -> None:
        with httpx.Client(base_url=str(stack.http.base_url), timeout=30) as http:
            for n in range(PER_INSTANCE):
                answer = http.post(f"{stack.base(instance)}/send-text",
                                   json={"phone": "5511999999999", "message": f"m{n}", "delayMessage": 0.4})
                assert answer.status_code == 200, answer.text
                accepted[instance["id"]].append(answer.json()["zaapId"])

    threads = [threading.Thread(target=post, args=(i,)) for i in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return accepted


def phases_of(stack: Stack, worker_id: str) -> dict[str, set[str]]:
    """The frozen worker's sends in flight: `preparing` (no frame yet) or `answer` (the frame left,
    the answer awaited). Read half a second into the freeze, once what it sent has landed."""
    rows = stack.all("""
        SELECT m.zaap_id, EXISTS (SELECT 1 FROM simulator_events e
                                   WHERE e.zaap_id = m.zaap_id AND e.kind = 'send') AS framed
          FROM messages m WHERE m.worker_id = %s AND m.status = 'sending'""", (worker_id,))
    return {"preparing": {r["zaap_id"] for r in rows if not r["framed"]},
            "answer": {r["zaap_id"] for r in rows if r["framed"]}}


def test_a_frozen_worker_writes_nothing_late_and_the_contact_sees_every_instance_in_order(make_stack: Any) -> None:
    seed = int(os.environ.get("FREEZE_SEED", random.randrange(1_000_000)))
    rng = random.Random(seed)
    report: list[str] = [f"seed {seed}"]
    stack: Stack = make_stack(workers=3)
    try:
        instances = [stack.create_instance() for _ in range(PLAIN)] + [
            stack.create_instance(transport="simulator-session") for _ in range(SESSION)]
        for instance in instances:
            stack.simulate(instance, prepareMs=PREPARE_MS, latencyMs=LATENCY_MS)
        worker_ids = {p.pid: wid for p in stack.workers
                      if (wid := _worker_id(stack, p))}
        accepted = post_backlog(stack, instances)
        preparing: set[str] = set()
        framed: set[str] = set()
        freezes = 0
        while freezes < MIN_FREEZES or (not preparing or not framed) and freezes < MAX_FREEZES:
            time.sleep(rng.uniform(0.5, 1.5))
            sleeper = rng.choice(stack.workers)
            sleeper.send_signal(signal.SIGSTOP)
            try:
                time.sleep(0.5)
                phases = phases_of(stack, worker_ids[sleeper.pid])
                time.sleep(FROZEN_S - 0.5)
            finally:
                sleeper.send_signal(signal.SIGCONT)
            freezes += 1
            preparing |= phases["preparing"]
            framed |= phases["answer"]
            report.append(f"froze {worker_ids[sleeper.pid][:8]} with {len(phases['preparing'])} preparing, "
                          f"{len(phases['answer'])} awaiting the answer")
        assert preparing and framed, f"every phase frozen at least once ({report})"

        every = [z for ids in accepted.values() for z in ids]
        stack.wait_completed(every, timeout=180)
        twice: dict[str, int] = {}
        for instance in instances:
            sent = [s["zaap_id"] for s in stack.sends(instance)]
            order = {z: n for n, z in enumerate(accepted[instance["id"]])}
            seen = [order[z] for z in sent]
            assert seen == sorted(seen), f"a message after a later one on {instance['id']}: {seen} ({report})"
            assert sorted(set(seen)) == list(range(PER_INSTANCE)), f"lost on {instance['id']} ({report})"
            twice |= {z: sent.count(z) for z in sent if sent.count(z) > 1}
        report.append(f"sent twice: {len(twice)}, all frozen after their frame left: {set(twice) <= framed}")
        print("; ".join(report))
        assert set(twice) <= framed and all(n == 2 for n in twice.values()), \
            f"sent twice without a frame out before the freeze: {set(twice) - framed} ({report})"
        assert not preparing & set(twice), f"frozen before its frame, sent twice ({report})"
    except BaseException:
        print("freeze run: " + "; ".join(report))
        raise


def _worker_id(stack: Stack, process: Any) -> str:
    from tests.test_chaos import worker_id_of

    return worker_id_of(stack, process)


def test_a_call_that_answers_after_the_job_timeout_completes_its_message_once(make_stack: Any) -> None:
    """The job timeout is 4 s; the simulator answers after 6 s. The message is recorded as
    uncertain, held back while the call can still answer, and completed by the late answer: sent
    once, with one attempt, and the next message follows it."""
    stack: Stack = make_stack()
    instance = stack.create_instance()
    stack.simulate(instance, latencyMs=6000)
    slow = stack.send_text(instance, "slow")["zaapId"]
    after = stack.send_text(instance, "after")["zaapId"]
    wait_until(lambda: "uncertain" in (stack.job(slow)["last_error"] or ""), 30, "the job timeout")
    stack.simulate(instance, latencyMs=0)
    stack.wait_completed([slow, after], timeout=30)
    assert [s["zaap_id"] for s in stack.sends(instance)] == [slow, after]
    job = stack.job(slow)
    assert job["attempts"] == 1 and job["whatsapp_message_id"].startswith("SIM")
    assert "answered after all" in (stack.history(slow)[-1]["detail"] or "")
