"""Rows of whatsmeow's session store, for tests that need a paired device without a phone."""

from __future__ import annotations

from typing import Any

import psycopg


def insert_device(conn: psycopg.Connection[Any], jid: str, *, push_name: str = "", business_name: str = "",
                  schema: str = "whatsmeow") -> None:
    """A linked device as whatsmeow stores one after pairing (keys of the right sizes, no value)."""
    conn.execute(
        f'INSERT INTO "{schema}".whatsmeow_device (jid, registration_id, noise_key, identity_key, signed_pre_key,'
        " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig, adv_account_sig_key,"
        " adv_device_sig, push_name, business_name) VALUES (%s, 1, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s, %s, %s)",
        (jid, b"n" * 32, b"i" * 32, b"s" * 32, b"g" * 64, b"a" * 32, b"d", b"c" * 64, b"k" * 32, b"v" * 64,
         push_name, business_name))
