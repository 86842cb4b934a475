"""Message building fixes in the neonize transport (workers/transports/neonize/messages.py): the
type sent for media a server calls generic, view-once wrappers, uploads refused for size, animated
stickers, replies quoting the original by its author, group reactions with their participant,
the per-worker media budget. The builders load neonize's Go library, so each check runs in a subprocess
(tests/whatsapp_checks.py `message_fixes`)."""

from __future__ import annotations

import pytest

from tests.stack import run_child_check


def run_fix(name: str) -> str:
    return run_child_check("whatsapp_checks", "message_fixes", name)


@pytest.mark.parametrize(("name", "said"), [
    ("generic_type", "the bytes decide"),  # an S3 `binary/octet-stream` image is sent as image/png
    ("view_once", "wrapped"),  # viewOnce media inside `viewOnceMessage`, the inner flag kept
    ("upload_too_large", "permanent"),  # HTTP 413 from the upload: discarded with the reason
    ("animated_sticker", "marked"),  # an animated WebP is `isAnimated`, a static one is not
    ("reply_quote", "the original, by its author"),  # the quote's author and, when ours, its text
    ("group_reaction", "with the participant"),  # a group reaction names the reacted message's sender
    ("media_budget", "slots and bytes held"),  # media in memory bounded per worker, in count and bytes
])
def test_message_building_fix(name: str, said: str) -> None:
    assert said in run_fix(name)
