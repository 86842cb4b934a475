"""The README's "Trying it" session, run as written against a real stack, so that it cannot rot.

The block is taken from README.md (the first ```sh block under "## Trying it") and pasted into a bash
session, as a newcomer would after `make run`. Two things differ from their terminal, both explicit:

- the API address: `localhost:8000` becomes this stack's `127.0.0.1:<port>`;
- the admin token: the session runs in a temporary directory whose `.data/admin_token` holds the stack's.

(bash runs with `-u` and `pipefail`, so that an unset variable or a failed pipe stops it with the reason.)

Then the block's last command (the simulator's events) is run again in the same session until the send
shows up, as the README tells the reader to do.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from tests.stack import ADMIN_TOKEN, ROOT, Stack, wait_until

README_ADDRESS = "localhost:8000"
SEND_WAIT = 60.0  # seconds: delayMessage 5 s + delayTyping 2 s, with plenty of room


def readme_block() -> str:
    """The first ```sh block under "## Trying it" in README.md."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Trying it\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section, 'README.md has no "## Trying it" section'
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, 'the "## Trying it" section has no ```sh block'
    return block.group(1)


def last_command(block: str) -> str:
    """The block's last command (joining backslash-continued lines), without its trailing comment."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if not line.endswith("\\"):
            commands.append(pending)
            pending = ""
    assert commands, "the block has no command"
    return commands[-1]


def json_answers(output: str) -> list[Any]:
    """Every JSON value printed, in order (curl prints them with or without newlines between them)."""
    decoder = json.JSONDecoder()
    answers, at = [], 0
    while True:
        while at < len(output) and output[at].isspace():
            at += 1
        if at == len(output):
            return answers
        try:
            value, at = decoder.raw_decode(output, at)
        except json.JSONDecodeError as error:
            raise AssertionError(f"the block printed something that is not JSON at {at}:\n{output}") from error
        answers.append(value)


class Session:
    """One bash process fed commands on stdin, like a terminal the README is pasted into.

    `-u`: a variable the block uses without setting it ends the session with the error; `pipefail`: a
    failing `curl … | python3 …` is not hidden. A session that ends early fails the run that fed it.
    """

    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen(
            ["bash", "--norc", "--noprofile", "-u", "-o", "pipefail"], cwd=cwd, text=True, encoding="utf-8",
            env={**os.environ, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"},  # curl goes straight to the stack
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, commands: str, timeout: float = 30) -> str:
        """Feed `commands`; return what they printed once they are done (their last status must be 0)."""
        marker = f"__done_{uuid.uuid4().hex}__"
        assert self.process.stdin is not None
        self.process.stdin.write(f"{commands}\nprintf '\\n%s %s\\n' {marker} $?\n")
        self.process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"still running after {timeout}s; so far:\n{''.join(output)}") from None
            if line is None:
                raise AssertionError(f"bash exited ({self.process.wait()}); it printed:\n{''.join(output)}")
            if line.startswith(marker):
                status = line.split()[1]
                assert status == "0", f"the last command exited {status}; the commands printed:\n{''.join(output)}"
                return "".join(output)
            output.append(line)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def test_readme_trying_it_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    missing = [tool for tool in ("bash", "curl", "python3") if shutil.which(tool) is None]
    assert not missing, f"the README's session needs {missing} on PATH"
    block = readme_block()
    assert README_ADDRESS in block and ".data/admin_token" in block, block
    block = block.replace(README_ADDRESS, f"127.0.0.1:{stack.port}")
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "admin_token").write_text(ADMIN_TOKEN + "\n")

    session = Session(tmp_path)
    try:
        output = session.run(block)
        answers = json_answers(output)
        assert len(answers) == 4, f"expected the create, send, queue and events answers; got:\n{output}"
        created, sent, queue_page, events = answers

        # The instance was created, and the block went on with its id and token.
        assert isinstance(created, dict) and "id" in created and "token" in created, created
        assert [i["id"] for i in stack.http.get(
            "/instances", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()] == [created["id"]]

        # The send was accepted: a zaapId, stored for that instance.
        assert isinstance(sent, dict) and sent.get("zaapId"), sent
        zaap_id = sent["zaapId"]
        job = stack.job(zaap_id)
        assert str(job["instance_id"]) == created["id"] and job["phone"] == "5511999999999"

        # The queue lists it.
        assert isinstance(queue_page, dict), queue_page
        assert [m["zaapId"] for m in queue_page.get("messages", [])] == [zaap_id], queue_page

        # The simulator's events: a list now; the send shows up once its delays have passed, when the
        # reader runs the last command again.
        assert isinstance(events, list), events
        again = last_command(block)

        def has_send(answer: Any) -> bool:
            return isinstance(answer, list) and any(e.get("kind") == "send" for e in answer)

        def events_again() -> Any:
            [answer] = json_answers(session.run(again))
            return answer if has_send(answer) else None

        if not has_send(events):
            events = wait_until(events_again, SEND_WAIT, "the send in the simulator's events", interval=0.2)
        [send] = [e for e in events if e["kind"] == "send"]
        assert send["zaapId"] == zaap_id and send["phone"] == "5511999999999", send
        assert send["payload"].get("message") == "Olá!", send
        assert any(e["kind"] == "presence" for e in events), events  # the "typing…" before it
    finally:
        session.close()
