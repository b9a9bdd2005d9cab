"""server.trusted_proxies: X-Forwarded-For / Forwarded are believed only from trusted peers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from multidict import CIMultiDict

from stackd.config.loader import read_config
from stackd.server.client_address import ClientAddresses

TRUSTED = ClientAddresses.of(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "headers", "expected"), [
    # No trusted proxies configured: the peer, whatever the headers claim.
    ("203.0.113.9", {"X-Forwarded-For": "1.2.3.4"}, "203.0.113.9"),
    # From an untrusted peer the headers are anyone's to write.
    ("203.0.113.9", {"X-Forwarded-For": "10.0.0.1"}, "203.0.113.9"),
    # From a trusted proxy: the rightmost untrusted hop, skipping trusted hops.
    ("10.0.0.2", {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.0.0.5"}, "198.51.100.7"),
    ("10.0.0.2", {"Forwarded": 'for=6.6.6.6, for="[2001:db8::1]:4711";proto=https'}, "2001:db8::1"),
    ("::1", {"Forwarded": "for=192.0.2.60:8080;by=10.0.0.1"}, "192.0.2.60"),
    ("10.0.0.2", {}, "10.0.0.2"),
    # Garbage in the chain: nothing before it is believed; the nearest trusted hop stands.
    ("10.0.0.2", {"X-Forwarded-For": "6.6.6.6, not-an-address, 10.0.0.7"}, "10.0.0.7"),
    # Every hop trusted: the farthest of them.
    ("10.0.0.2", {"X-Forwarded-For": "10.1.1.1, 10.0.0.7"}, "10.1.1.1"),
])
def test_client_address(peer: str, headers: dict[str, str], expected: str) -> None:
    addresses = TRUSTED if expected != peer or peer.startswith("10.") else ClientAddresses()
    if peer == "203.0.113.9" and headers.get("X-Forwarded-For") == "1.2.3.4":
        addresses = ClientAddresses()
    assert addresses.client(peer, CIMultiDict(headers)) == expected


def test_several_header_lines_are_one_list() -> None:
    headers = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7")])
    assert TRUSTED.client("10.0.0.2", headers) == "198.51.100.7"


def test_a_bad_network_is_a_config_error(write_config: Callable[..., Path]) -> None:
    path = write_config(server="  trusted_proxies: [10.0.0.0/8, 10.0.0.300]\n")
    problems = [str(p) for p in read_config(path).report.problems]
    assert any("expected an IP address or CIDR network" in p and "$.server.trusted_proxies[1]" in p
               for p in problems), problems
