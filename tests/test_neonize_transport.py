"""The neonize transport's calls (workers/transports/neonize/transport.py): a late answer to an
abandoned send, the claim checked before each frame, every call bounded. They load neonize's Go
library, so each runs in a subprocess (tests/whatsapp_checks.py)."""

from __future__ import annotations

import pytest

from tests.test_whatsapp import run_check


@pytest.mark.parametrize(("check", "said"), [
    # Issue 21 item 4: the uncertain error carries the call; its id comes back late; the instance
    # waits for it, and no longer than whatsmeow's bound.
    ("late_answer", "carried, waited for, bounded"),
    # Item 8's hook: before_write once per frame, after the uploads; ClaimLost sends nothing.
    ("claim_checked", "a lost claim sends nothing"),
    # Item 6: a hung upload is retryable and holds its instance until the bound or a restart.
    ("bounded_calls", "held until the bound or a restart, 413 permanent"),
])
def test_transport_call(check: str, said: str) -> None:
    assert said in run_check(check)
