"""The outbound policy's judgements, and the settings that guard the service's own secrets."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from service.outbound import Policy, is_public, literal_address
from service.settings import Settings


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
    "255.255.255.255", "240.0.0.1", "::1", "::", "fe80::1", "fc00::1", "fd00:ec2::254", "ff02::1", "fec0::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "2002:a9fe:a9fe::", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2001::1", "2001:db8::1",
])
def test_internal_addresses_and_their_wrappers_are_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8",
                                     "64:ff9b::808:808", "2002:808:808::"])
def test_public_addresses_are(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(("host", "address"), [
    ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"), ("10", "0.0.0.10"), ("example.com", None), ("1e100.net", None),
])
def test_literal_addresses_are_read_as_a_resolver_reads_them(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (str(found) if found else None) == address


def test_the_allow_list_opens_named_hosts_networks_and_ports_and_plain_http_to_them() -> None:
    policy = Policy.parse("hooks.internal, 10.1.0.0/16, 127.0.0.1:8443, [fd00::1]:443")
    assert policy.refusal("http://hooks.internal/x") is None
    assert policy.refusal("http://10.1.2.3/x") is None
    assert policy.refusal("http://127.0.0.1:8443/x") is None
    assert policy.refusal("https://127.0.0.1:9000/x") == "address not allowed: it is not a public internet address"
    assert policy.refusal("https://10.2.0.1/x") == "address not allowed: it is not a public internet address"
    assert policy.refusal("http://example.com/x").startswith("must be an https URL")  # type: ignore[union-attr]
    assert policy.refusal("https://example.com/x") is None
    assert Policy.parse("", plain_http=True).refusal("http://example.com/x") is None
    assert policy.address_allowed("hooks.internal", ipaddress.ip_address("10.9.9.9"), 443)
    assert not policy.address_allowed("other.internal", ipaddress.ip_address("10.9.9.9"), 443)
    assert policy.address_allowed("x", ipaddress.ip_address("fd00::1"), 443)
    assert not policy.address_allowed("x", ipaddress.ip_address("fd00::1"), 80)
    with pytest.raises(ValueError, match="OUTBOUND_ALLOW"):
        Policy.parse("not a host!")


@pytest.mark.parametrize("token", ["short", "x" * 31, "CHANGE-ME: a long random string (openssl rand -hex 32)"])
def test_a_weak_admin_token_is_refused_at_start(token: str) -> None:
    with pytest.raises(ValidationError, match="ADMIN_TOKEN must be at least 32 characters"):
        Settings(admin_token=token)
    assert Settings(admin_token="k" * 32).admin_token == "k" * 32
