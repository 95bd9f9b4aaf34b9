"""Which IP a connection counts as: peer, unless the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress

import pytest

from hubd.core.clientip import Network, resolve_client_ip

TRUSTED: tuple[Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("fd00::/8"),
)


def resolve(
    peer: str | None,
    xff: str | None = None,
    real: str | None = None,
    trusted: tuple[Network, ...] = TRUSTED,
) -> str:
    return resolve_client_ip(peer, xff, real, trusted)


def test_peer_is_used_when_no_proxy_is_trusted() -> None:
    assert resolve("203.0.113.7", "1.1.1.1", "2.2.2.2", trusted=()) == "203.0.113.7"


@pytest.mark.parametrize(
    ("xff", "real"),
    [("1.1.1.1", None), (None, "2.2.2.2"), ("1.1.1.1, 10.0.0.1", "2.2.2.2"), ("garbage", "x")],
)
def test_spoofed_headers_from_an_untrusted_peer_are_ignored(
    xff: str | None, real: str | None
) -> None:
    assert resolve("203.0.113.7", xff, real) == "203.0.113.7"


def test_trusted_peer_without_headers_counts_as_itself() -> None:
    assert resolve("10.1.2.3") == "10.1.2.3"


def test_trusted_peer_single_forwarded_address() -> None:
    assert resolve("10.1.2.3", "198.51.100.4") == "198.51.100.4"


def test_right_most_non_trusted_forwarded_hop_wins() -> None:
    # The client spoofed "6.6.6.6"; our proxies appended the real address and themselves.
    assert resolve("10.0.0.1", "6.6.6.6, 198.51.100.4, 10.9.9.9, 10.0.0.2") == "198.51.100.4"


def test_forwarded_hops_with_ports_and_brackets() -> None:
    assert resolve("10.0.0.1", "198.51.100.4:5555") == "198.51.100.4"
    assert resolve("10.0.0.1", "[2001:db8::7]:443") == "2001:db8::7"
    assert resolve("10.0.0.1", "2001:db8::7, fd00::1") == "2001:db8::7"


def test_all_forwarded_hops_trusted_falls_back_to_x_real_ip_then_the_peer() -> None:
    assert resolve("10.0.0.1", "10.5.5.5, 10.6.6.6", "198.51.100.9") == "198.51.100.9"
    assert resolve("10.0.0.1", "10.5.5.5, 10.6.6.6") == "10.0.0.1"


def test_x_real_ip_is_the_fallback_for_a_trusted_peer() -> None:
    assert resolve("10.0.0.1", None, "198.51.100.9") == "198.51.100.9"
    assert resolve("10.0.0.1", "", "198.51.100.9") == "198.51.100.9"
    assert resolve("10.0.0.1", "not-an-ip", "198.51.100.9") == "198.51.100.9"


def test_forwarded_for_wins_over_x_real_ip() -> None:
    assert resolve("10.0.0.1", "198.51.100.4", "198.51.100.9") == "198.51.100.4"


def test_unparsable_headers_from_a_trusted_peer_fall_back_to_the_peer() -> None:
    assert resolve("10.0.0.1", "junk", "junk") == "10.0.0.1"


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::FFFF:203.0.113.7", "203.0.113.7"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("203.0.113.7", "203.0.113.7"),
    ],
)
def test_peer_addresses_are_normalised(peer: str, expected: str) -> None:
    assert resolve(peer, trusted=()) == expected


def test_ipv4_mapped_peer_is_matched_against_ipv4_trusted_networks() -> None:
    assert resolve("::ffff:10.0.0.1", "198.51.100.4") == "198.51.100.4"


def test_ipv4_mapped_forwarded_address_is_normalised() -> None:
    assert resolve("10.0.0.1", "::ffff:198.51.100.4") == "198.51.100.4"


def test_missing_peer() -> None:
    assert resolve(None, "1.1.1.1") == "unknown"
