"""No bot label on our messages (issue 21): neonize's `<bot biz_bot="1"/>` node.

neonize 0.5.2 adds that node, which shows the contact an AI/bot label, to every message for a
one-to-one chat, in Go, unless NEONIZE_BOT_TAG says off *in the environment the process was
started with* (workers/transports/neonize/bottag.py). Python never sees the stanza, so:

- what the send path can be checked for, with neonize's send mocked at the network edge as in
  tests/whatsapp_checks.py: a worker started without NEONIZE_BOT_TAG=off sends nothing to a
  one-to-one chat (the message waits), even when Python sets the variable itself, and one
  started with it sends, with it in the environment its Go library read;
- what the Go library itself does with a text message, read from its memory under gdb where
  gdb is installed: the nodes goneonize's `GenerateWABinary` hands whatsmeow to add to the
  message stanza.

Everything that loads the Go library runs in a child process (`python -m tests.test_neonize_bot_tag`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.stack import ROOT
from workers.transports.neonize import bottag
from workers.transports.neonize.pairing import MARKER, PairingAttempt

VARIABLE = bottag.VARIABLE
PHONE = "5511999999999"
GROUP = "120363000000000000-group"
MARK = "WMQ-BOT-TAG "

# -- the rule, as goneonize's shouldAddBotNode has it -------------------------------------------


@pytest.mark.parametrize(("value", "adds"), [
    (None, True), ("", True), ("on", True), ("1", True), ("yes", True),
    ("off", False), (" OFF ", False), ("none", False), ("False", False), ("0", False),
])
def test_the_rule_is_goneonizes(value: str | None, adds: bool) -> None:
    assert bottag.adds_node(value) is adds


def test_the_start_up_environment_is_read_as_linux_shows_it(tmp_path: Path) -> None:
    block = tmp_path / "environ"
    block.write_bytes(b"A=1\0NEONIZE_BOT_TAG=off\0EMPTY=\0B=x=y\0")
    assert bottag.startup_environment(str(block)) == {"A": "1", VARIABLE: "off", "EMPTY": "", "B": "x=y"}
    assert bottag.startup_environment(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(("startup", "current", "labels", "refused"), [
    ({}, {}, True, True),                                   # started without it: Go tags
    ({}, {VARIABLE: "off"}, True, True),                    # set by Python later: Go never sees it
    ({VARIABLE: "off"}, {VARIABLE: "off"}, False, False),   # started with it off
    ({VARIABLE: ""}, {VARIABLE: ""}, True, True),           # empty is not off
    ({VARIABLE: "on"}, {VARIABLE: "on"}, True, False),      # the operator asked for the label
    ({VARIABLE: "off"}, {VARIABLE: "on"}, True, True),      # changed in place: Go may read either
    (None, {VARIABLE: "off"}, False, False),                # no /proc: the environment is all there is
    (None, {}, True, True),
])
def test_one_to_one_messages_wait_unless_go_reads_the_tag_off(startup: dict[str, str] | None,
                                                              current: dict[str, str], labels: bool,
                                                              refused: bool) -> None:
    assert bottag.labels_one_to_one(startup, current) is labels
    reason = bottag.refusal_reason(startup, current)
    assert (reason is not None) is refused
    if reason:
        assert f"{VARIABLE}=off" in reason


def test_processes_we_start_get_the_tag_off_unless_it_was_set() -> None:
    assert bottag.child_environment({"A": "1"}) == {"A": "1", VARIABLE: "off"}
    assert bottag.child_environment({VARIABLE: " "})[VARIABLE] == "off"
    assert bottag.child_environment({VARIABLE: "on"})[VARIABLE] == "on"


def test_the_pairing_child_starts_with_the_tag_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one process the transport starts that loads neonize (it sends no message)."""
    monkeypatch.delenv(VARIABLE, raising=False)
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def report(line: dict[str, Any]) -> None:
        seen.append(line)
        if "exit" in line:
            done.set()

    code = f"import json, os; print({MARKER!r} + json.dumps({{'tag': os.environ.get({VARIABLE!r})}}), flush=True)"
    PairingAttempt(store_url="x", key="k", phone=None, proxy=None, report=report, deadline=30,
                   command=[sys.executable, "-c", code])
    assert done.wait(30), seen
    assert seen[0] == {"tag": "off"}, seen


# -- the send path, neonize's send mocked at the network edge ------------------------------------


def run_child(*args: str, tag: str | None, gdb: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This module's `child` in a new process whose start-up environment has NEONIZE_BOT_TAG
    = `tag` (None: not at all)."""
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if tag is not None:
        env[VARIABLE] = tag
    command = [sys.executable, "-m", "tests.test_neonize_bot_tag", *args]
    if gdb is not None:
        command = ["gdb", "-batch", "-nx", "-x", str(gdb), "--args", *command]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def reports(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line[len(MARK):]) for line in result.stdout.splitlines() if line.startswith(MARK)]


def edge_run(*args: str, tag: str | None) -> list[dict[str, Any]]:
    result = run_child("edge", *args, tag=tag)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return reports(result)


def test_a_worker_started_without_the_tag_off_sends_no_one_to_one_message() -> None:
    """Neither the message nor its "typing…" goes to neonize: the head waits, with the reason.
    (Before issue 21 both went, and Go tagged the message.)"""
    text, presence = edge_run("text", PHONE, tag=None)
    for outcome in (text, presence):
        assert outcome["edge"] is None, outcome
        assert outcome["waits"] and f"not started with {VARIABLE}=off" in outcome["waits"], outcome


def test_setting_the_tag_from_python_does_not_reach_go() -> None:
    """`os.environ[NEONIZE_BOT_TAG] = "off"` before neonize is imported changes nothing for Go."""
    text, _ = edge_run("text", PHONE, "python-sets-off", tag=None)
    assert text["edge"] is None and text["waits"], text


def test_a_worker_started_with_the_tag_off_sends_with_it_in_gos_environment() -> None:
    text, presence = edge_run("text", PHONE, tag="off")
    assert text["waits"] is None and presence["waits"] is None, (text, presence)
    assert text["edge"] == {"to": f"{PHONE}@s.whatsapp.net", "fields": ["conversation"], "startup_tag": "off"}
    assert presence["edge"]["startup_tag"] == "off"


def test_groups_never_get_the_node_and_so_never_wait() -> None:
    text, _ = edge_run("text", GROUP, tag=None)
    assert text["waits"] is None and text["edge"]["to"] == "120363000000000000@g.us", text


def test_a_worker_started_asking_for_the_label_sends_labelled() -> None:
    """NEONIZE_BOT_TAG=on in the worker's environment: the operator's choice, for every message."""
    text, _ = edge_run("text", PHONE, tag="on")
    assert text["waits"] is None and text["edge"]["startup_tag"] == "on", text


# -- what the Go library does, read from its memory --------------------------------------------


def go_function_address(library: Path, name: str) -> int:
    """Where a Go function of a c-shared library starts, relative to the library's load address:
    .gopclntab names every Go function with its offset from `runtime.text`, and any cgo export
    (also in .dynsym) gives `runtime.text`. Go ≥ 1.20's layout; ELF64, little-endian."""
    data = library.read_bytes()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def cstr(at: int) -> str:
        return data[at:data.index(b"\0", at)].decode()

    sections = {cstr(heads[shstrndx][4] + h[0]): h for h in heads}
    pcln = sections[".gopclntab"][4]
    nfunc, _, _, names, _, _, _, table = struct.unpack_from("<8Q", data, pcln + 8)
    functions: dict[str, int] = {}
    for i in range(nfunc):
        entry, info = struct.unpack_from("<II", data, pcln + table + 8 * i)
        name_offset, = struct.unpack_from("<i", data, pcln + table + info + 4)
        functions[cstr(pcln + names + name_offset)] = entry
    symbols, strings = sections[".dynsym"][4:6], sections[".dynstr"][4]
    for at in range(symbols[0], symbols[0] + symbols[1], 24):
        symbol_name, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, at)
        export = cstr(strings + symbol_name)
        if export.startswith("_cgoexp_") and export in functions:
            return value - functions[export] + functions[name]
    raise LookupError("no cgo export to find runtime.text by")


#: Stop at goneonize's GenerateWABinary, let it return, and print the tags of the nodes it made
#: (a *[]waBinary.Node in RAX; a Node is Tag string, Attrs map, Content any: 40 bytes).
GDB_SCRIPT = """
set pagination off
set confirm off
handle SIGURG nostop noprint pass
handle SIGSEGV nostop noprint pass
handle SIGPIPE nostop noprint pass
catch load {library}
run
python
import gdb
maps = open("/proc/%d/maps" % gdb.selected_inferior().pid).read().splitlines()
base = next(int(m.split("-")[0], 16) for m in maps if m.endswith("/{library}") and m.split()[2] == "00000000")
gdb.execute("delete")
gdb.execute("break *%d" % (base + {offset}))
end
continue
finish
python
import gdb, json, struct
memory = gdb.selected_inferior().read_memory
nodes = int(gdb.parse_and_eval("$rax")) & (2 ** 64 - 1)
items, count, _ = struct.unpack("<3Q", bytes(memory(nodes, 24)))
tags = []
for i in range(count):
    tag, size = struct.unpack("<2Q", bytes(memory(items + 40 * i, 16)))
    tags.append(bytes(memory(tag, size)).decode())
print("{mark}" + json.dumps({{"nodes": tags}}))
end
kill
quit
"""


def go_library() -> Path:
    """neonize's Go library, found without loading it."""
    import importlib.util

    spec = importlib.util.find_spec("neonize")
    assert spec and spec.origin
    libraries = list(Path(spec.origin).parent.glob("neonize-linux-amd64.so"))
    assert libraries, "neonize ships no Go library for linux-amd64"
    return libraries[0]


needs_gdb = pytest.mark.skipif(
    shutil.which("gdb") is None or sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"),
    reason="reading the Go library's memory needs gdb on linux-amd64",
)


@needs_gdb
@pytest.mark.parametrize(("how", "message_type", "phone", "tag", "nodes"), [
    # Our send path, in a worker started with the tag off: a text message's stanza gets no node of
    # neonize's, an interactive one only its <biz> node.
    ("transport", "text", PHONE, "off", []),
    ("transport", "button-list", PHONE, "off", ["biz"]),
    # neonize left to itself: the bot node on any one-to-one message, not only interactive ones,
    # also when Python sets the variable before importing neonize; never in a group.
    ("neonize", "text", PHONE, None, ["bot"]),
    ("neonize", "text", PHONE, "python-sets-off", ["bot"]),
    ("neonize", "button-list", PHONE, None, ["biz", "bot"]),
    ("neonize", "text", GROUP, None, []),
])
def test_the_go_library_adds_the_bot_node_by_its_start_up_environment(
        tmp_path: Path, how: str, message_type: str, phone: str, tag: str | None, nodes: list[str]) -> None:
    library = go_library()
    script = tmp_path / "nodes.gdb"
    script.write_text(GDB_SCRIPT.format(library=library.name, mark=MARK,
                                        offset=go_function_address(library, "main.GenerateWABinary")))
    args = [how, message_type, phone] + (["python-sets-off"] if tag == "python-sets-off" else [])
    result = run_child(*args, tag=None if tag == "python-sets-off" else tag, gdb=script)
    if "ptrace: Operation not permitted" in result.stdout + result.stderr:
        pytest.skip("gdb may not trace processes here")
    found = [r["nodes"] for r in reports(result) if "nodes" in r]
    assert found == [nodes], f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


# -- the child ---------------------------------------------------------------------------------


def child(how: str, message_type: str, phone: str, *options: str) -> None:  # pragma: no cover - a child
    """`edge`: send `message_type` and a "typing…" through NeonizeTransport, with neonize's client
    mocked at the network edge; report for each whether it reached the edge (and what the Go
    library's environment says there) or waits. `transport`: the same send with the client
    unmocked (under gdb: Go ends the process after GenerateWABinary, the client never having
    connected). `neonize`: neonize's own send_message, without our transport."""
    if "python-sets-off" in options:
        os.environ[VARIABLE] = "off"  # before neonize is imported
    from service.logs import configure_logging

    configure_logging("ERROR")
    from workers.transports.base import InstanceDisconnected, OutgoingMessage
    from workers.transports.neonize.messages import build_message
    from workers.transports.neonize.registry import new_client
    from workers.transports.neonize.sessions import parse_jid
    from workers.transports.neonize.transport import NeonizeTransport, to_jid_text

    payload = {"message": "Olá"} if message_type == "text" else {
        "message": "Pick", "buttonList": {"buttons": [{"id": "1", "label": "Yes"}]}}
    client = new_client("postgresql://x@/y", "wmq-bot-tag-probe", None)  # never connected
    if how == "neonize":
        sys.stdout.flush()
        to = to_jid_text(phone)
        client.send_message(parse_jid(to), build_message(message_type, payload, upload=lambda *a: None, to=to))
        return
    reached: list[dict[str, Any]] = []
    if how == "edge":
        def send_message(jid: Any, message: Any) -> Any:
            reached.append({"to": f"{jid.User}@{jid.Server}", "fields": [f.name for f, _ in message.ListFields()],
                            "startup_tag": (bottag.startup_environment() or {}).get(VARIABLE)})
            return SimpleNamespace(ID="WA-1")

        def send_chat_presence(jid: Any, state: Any, media: Any) -> None:
            reached.append({"to": f"{jid.User}@{jid.Server}",
                            "startup_tag": (bottag.startup_environment() or {}).get(VARIABLE)})

        client.send_message = send_message  # type: ignore[method-assign]
        client.send_chat_presence = send_chat_presence  # type: ignore[method-assign]
    session = SimpleNamespace(connected=True, state="connected", detail=None, delivered=lambda: None, client=client)
    transport = NeonizeTransport(SimpleNamespace(owner=True, get=lambda _: session), timeout=60,  # type: ignore[arg-type]
                                 threads=1)
    instance_id = uuid.uuid4()
    calls = [
        lambda: transport.send(OutgoingMessage(zaap_id=uuid.uuid4().hex, instance_id=instance_id, phone=phone,
                                               message_type=message_type, payload=payload)),
        lambda: transport.send_presence(instance_id, phone, "composing"),
    ]
    for call in calls:
        before = len(reached)
        sys.stdout.flush()
        try:
            call()
            waits = None
        except InstanceDisconnected as error:
            waits = str(error)
        print(MARK + json.dumps({"edge": reached[before] if len(reached) > before else None, "waits": waits}),
              flush=True)
    transport.close()


if __name__ == "__main__":
    child(*sys.argv[1:])
