"""The logs: one JSON line per state change of a message, from every process (the API's
enqueue and cancel, the worker's claim, typing, send, failure), each naming the message as the
seed's example does (`zaap_id`, `instance_id`, `sequence`, `status`, `attempt`, `scheduled_at`),
and no message content, phone token or admin token at INFO."""

from __future__ import annotations

import json
from typing import Any

from tests.stack import ADMIN_TOKEN, Stack, wait_until

TRACE = ("zaap_id", "instance_id", "sequence", "status", "attempt", "scheduled_at")


def lines(stack: Stack) -> list[dict[str, Any]]:
    found = []
    for path in stack.log_files.values():
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
    return found


def trail(stack: Stack, zaap_id: str) -> list[dict[str, Any]]:
    return sorted((entry for entry in lines(stack) if entry.get("zaap_id") == zaap_id and "status" in entry),
                  key=lambda entry: entry["time"])


def test_every_state_change_is_one_traceable_line_without_content(stack: Stack) -> None:
    instance = stack.create_instance()
    typed = stack.send_text(instance, "segredo-da-loja-1", delayTyping=0.2)["zaapId"]
    stack.wait_status(typed, "completed")
    stack.simulate(instance, failNext=1, failMode="permanent")
    refused = stack.send_text(instance, "segredo-da-loja-2")["zaapId"]
    stack.wait_status(refused, "discarded")
    later = stack.send_text(instance, "segredo-da-loja-3", delayMessage=600)["zaapId"]
    assert stack.http.delete(f"{stack.base(instance)}/queue/{later}").status_code == 200

    wait_until(lambda: len(trail(stack, typed)) >= 5 and trail(stack, refused) and trail(stack, later), 10,
               "the log lines")
    # Accepted as the API answered it (`available`: due now; `scheduled`: later), then each change.
    assert [e["status"] for e in trail(stack, typed)] == ["available", "running", "typing", "sending", "completed"]
    assert [e["status"] for e in trail(stack, refused)] == ["available", "sending", "discarded"]
    assert [e["status"] for e in trail(stack, later)] == ["scheduled", "cancelled"]
    for zaap_id in (typed, refused, later):
        for entry in trail(stack, zaap_id):
            assert all(entry.get(key) is not None for key in TRACE), entry
            assert entry["instance_id"] == instance["id"] and entry["level"] in ("info", "warning")
    assert {e["logger"].split(".")[1] for e in trail(stack, typed)} >= {"core", "deliver"}, "API and worker"
    assert [e["attempt"] for e in trail(stack, typed)] == [0, 0, 0, 1, 1]

    everything = "\n".join(path.read_text() for path in stack.log_files.values())
    assert "segredo-da-loja" not in everything
    assert instance["token"] not in everything and ADMIN_TOKEN not in everything
