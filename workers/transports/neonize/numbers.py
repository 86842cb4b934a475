"""Phone numbers WhatsApp may know under another form.

Brazil added a ninth digit to mobile numbers (2012–2016); accounts registered before kept their
WhatsApp id without it, so `55 11 9xxxx-xxxx` may be `5511xxxxxxxx@s.whatsapp.net`, and the other
way round. whatsmeow then answers "no LID found … from server" for the form that is not
registered, before anything is sent; the transport asks WhatsApp which form is (`IsOnWhatsApp`)
and sends there.
"""

from __future__ import annotations

import re

_BRAZIL_MOBILE = re.compile(r"^55(?P<area>[1-9][1-9])(?P<nine>9?)(?P<number>[6-9]\d{7})$")


def brazil_variants(phone: str) -> list[str]:
    """The other form of a Brazilian mobile number (with or without the ninth digit), or []."""
    match = _BRAZIL_MOBILE.match(phone)
    if match is None:
        return []
    area, nine, number = match.group("area"), match.group("nine"), match.group("number")
    return [f"55{area}{number}"] if nine else [f"55{area}9{number}"]
