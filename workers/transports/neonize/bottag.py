"""neonize's bot tag: the `<bot biz_bot="1"/>` node that shows the contact an AI/bot label.

What neonize 0.5.2 does (its Go half, `goneonize/main.go`; the shipped library's machine code
matches that source: docs/decisions.md, "Message types as WhatsApp accepts them"):

- `SendMessage`, the Go function `NewClient.send_message` calls, passes whatsmeow the nodes
  `GenerateWABinary` makes. For a chat on `s.whatsapp.net` (one-to-one, by phone number) that
  appends `<bot biz_bot="1"/>` to every message but a legacy `ListMessage`, interactive or not
  (its `default` branch: text, media, location, contact, sticker, poll, reaction, link), unless
  `shouldAddBotNode` says no: `NEONIZE_BOT_TAG`, trimmed and lower-cased, is one of `off`,
  `none`, `false`, `0`. Groups (`g.us`) and `lid` chats never get it. There is no per-message or per-call option.
- The variable is read on every send, but from the Go runtime's own copy of the environment,
  made when the library loads from the block the process was *started* with. A variable that
  Python adds to `os.environ` (before or after `import neonize`) is not in that block: Go never
  sees it. So the tag is fixed per process, by the environment it is started with.

So a worker must be started with `NEONIZE_BOT_TAG=off`. One that was not would label every
one-to-one message: it sends none (they wait, with the reason) unless its environment asks for
the label explicitly (`NEONIZE_BOT_TAG=on`). This module loads no Go.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping

logger = logging.getLogger("wmq.whatsapp")

VARIABLE = "NEONIZE_BOT_TAG"
#: The values for which goneonize's `shouldAddBotNode` says no (after trimming and lower-casing).
OFF = frozenset({"off", "none", "false", "0"})
#: The chats that get the node: whatsmeow's `DefaultUserServer` (goneonize's `isPrivate`).
USER_SERVER = "s.whatsapp.net"
#: Where Linux shows the environment block the process was started with (what Go copies).
STARTUP_ENVIRONMENT = "/proc/self/environ"


def adds_node(value: str | None) -> bool:
    """goneonize's rule for a one-to-one chat, given the variable's value (None: unset)."""
    return (value or "").strip().lower() not in OFF


def startup_environment(path: str = STARTUP_ENVIRONMENT) -> dict[str, str] | None:
    """The environment the process was started with, or None where the system does not show it."""
    try:
        with open(path, "rb") as block:
            entries = block.read().split(b"\0")
    except OSError:
        return None
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if b"=" in entry)
    return {name: value for name, _, value in pairs}


def labels_one_to_one(startup: Mapping[str, str] | None, current: Mapping[str, str]) -> bool:
    """Whether the Go library of a process with these environments tags one-to-one messages.

    Go reads `startup`; an entry that was in it and that Python changed before the library
    loaded may be what Go reads instead (libc changes it in place), so both must say off. With
    no start-up block to read, `current` is all there is to go by."""
    if startup is None:
        return adds_node(current.get(VARIABLE))
    return adds_node(startup.get(VARIABLE)) or adds_node(current.get(VARIABLE))


def asked_for(startup: Mapping[str, str] | None, current: Mapping[str, str]) -> bool:
    """The process was started with the tag asked for by name (`NEONIZE_BOT_TAG=on`, say), not
    merely left unset: the operator chose the label for every one-to-one message."""
    value = (current if startup is None else startup).get(VARIABLE, "").strip()
    return bool(value) and adds_node(value)


def refusal_reason(startup: Mapping[str, str] | None, current: Mapping[str, str]) -> str | None:
    """Why this process must not send to one-to-one chats, or None when it may."""
    if not labels_one_to_one(startup, current) or asked_for(startup, current):
        return None
    return (f"neonize would label every one-to-one message as sent by a bot: this worker was not started "
            f"with {VARIABLE}=off in its environment; they wait until it is restarted with it (or with "
            f"{VARIABLE}=on, to send them labelled)")


@functools.cache
def refusal() -> str | None:
    """`refusal_reason` for this process, worked out once (neither environment Go reads can
    change once the library is loaded) and logged then."""
    startup = startup_environment()
    reason = refusal_reason(startup, os.environ)
    if reason:
        logger.error("one-to-one WhatsApp messages will wait: %s", reason)
    elif labels_one_to_one(startup, os.environ):
        logger.warning("%s asks neonize to label every one-to-one WhatsApp message as sent by a bot",
                       VARIABLE)
    return reason


def child_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The environment for a process this one starts: the tag off unless it was set by name."""
    if environment.get(VARIABLE, "").strip():
        return dict(environment)
    return {**environment, VARIABLE: "off"}
