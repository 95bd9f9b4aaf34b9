"""Which IP a connection counts as: peer, unless the peer is a trusted proxy; then only the
configured header, read within a bounded window; IPv6 per prefix, zone ids dropped."""

from __future__ import annotations

import ipaddress

import pytest

from hubd.core.clientip import (
    MAX_HEADER_CHARS,
    MAX_HOPS,
    ClientIpHeader,
    Network,
    forwarded_client,
    identity,
    parse_address,
    resolve_client_ip,
)

TRUSTED: tuple[Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("fd00::/8"),
)


def resolve(
    peer: str | None,
    xff: str | None = None,
    real: str | None = None,
    trusted: tuple[Network, ...] = TRUSTED,
    header: ClientIpHeader = "x-forwarded-for",
    ipv6_prefix: int = 128,
) -> str:
    headers = {"x-forwarded-for": xff, "x-real-ip": real}
    present = {k: v for k, v in headers.items() if v is not None}
    return resolve_client_ip(peer, present, trusted, header=header, ipv6_prefix=ipv6_prefix)


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


def test_all_forwarded_hops_trusted_is_the_peer() -> None:
    assert resolve("10.0.0.1", "10.5.5.5, 10.6.6.6") == "10.0.0.1"


def test_x_real_ip_is_ignored_when_x_forwarded_for_is_the_configured_header() -> None:
    # A proxy that passes a client's own X-Real-IP through must not let it pick its IP.
    assert resolve("10.0.0.1", None, "198.51.100.9") == "10.0.0.1"
    assert resolve("10.0.0.1", "", "198.51.100.9") == "10.0.0.1"
    assert resolve("10.0.0.1", "10.5.5.5, 10.6.6.6", "198.51.100.9") == "10.0.0.1"
    assert resolve("10.0.0.1", "not-an-ip", "198.51.100.9") == "10.0.0.1"


def test_x_real_ip_is_read_when_it_is_the_configured_header() -> None:
    assert resolve("10.0.0.1", None, "198.51.100.9", header="x-real-ip") == "198.51.100.9"
    assert resolve("10.0.0.1", "198.51.100.4", "198.51.100.9", header="x-real-ip") == (
        "198.51.100.9"
    )
    # X-Forwarded-For is then ignored, even when it is the only header.
    assert resolve("10.0.0.1", "198.51.100.4", header="x-real-ip") == "10.0.0.1"
    # ... and X-Real-IP from an untrusted peer as well.
    assert resolve("203.0.113.7", None, "198.51.100.9", header="x-real-ip") == "203.0.113.7"


@pytest.mark.parametrize("real", ["junk", "198.51.100.9, 198.51.100.10", "x" * 60000])
def test_unusable_x_real_ip_is_the_peer(real: str) -> None:
    assert resolve("10.0.0.1", None, real, header="x-real-ip") == "10.0.0.1"


def test_unparsable_headers_from_a_trusted_peer_fall_back_to_the_peer() -> None:
    assert resolve("10.0.0.1", "junk", "junk") == "10.0.0.1"


def test_an_unreadable_hop_ends_the_walk() -> None:
    # Left of a hop no trusted proxy could read ("unknown") is whatever the client wrote.
    assert resolve("10.0.0.1", "198.51.100.4, unknown, 10.0.0.2") == "10.0.0.1"
    assert resolve("10.0.0.1", "198.51.100.4, unknown, 198.51.100.5") == "198.51.100.5"


def test_empty_list_items_are_skipped() -> None:
    assert resolve("10.0.0.1", "198.51.100.4, , 10.0.0.2,") == "198.51.100.4"


# -- bounded work on X-Forwarded-For ----------------------------------------------------------


def trusted_hops(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


def test_only_the_last_max_hops_hops_are_examined() -> None:
    # The client is just beyond reach: MAX_HOPS trusted proxies stand between.
    chain = ", ".join(["198.51.100.4", *trusted_hops(MAX_HOPS)])
    assert resolve("10.0.0.1", chain) == "10.0.0.1"
    # One proxy fewer and it is found.
    chain = ", ".join(["198.51.100.4", *trusted_hops(MAX_HOPS - 1)])
    assert resolve("10.0.0.1", chain) == "198.51.100.4"


def test_only_the_end_of_a_long_header_is_examined() -> None:
    client = "198.51.100.4"
    # Well within MAX_HOPS, but a 60 KB padding of spaces pushes the client out of the
    # examined window: it is not looked at.
    far = f"{client}," + " " * 60000 + ", ".join(trusted_hops(2))
    assert resolve("10.0.0.1", far) == "10.0.0.1"
    # The usual shape of a 60 KB header: a spoofed prefix, then the real chain.
    spoofed = ", ".join(["203.0.113.9"] * 5000 + [client, *trusted_hops(3)])
    assert len(spoofed) > 60000
    assert resolve("10.0.0.1", spoofed) == client


def test_a_hop_cut_by_the_window_is_not_read() -> None:
    client = "198.51.100.44"
    for keep in range(1, len(client)):
        # A trusted hop padded with spaces (allowed around list items) fills the window
        # but for the last `keep` characters of the client's hop, where "8.51.100.44"
        # (keep=11) would read as another, valid address.
        proxy = "10.0.0.2"
        tail = "," + " " * (MAX_HEADER_CHARS - keep - 1 - len(proxy)) + proxy
        value = "203.0.113.9, " + client + tail
        assert value[-MAX_HEADER_CHARS:] == client[-keep:] + tail
        assert forwarded_client(value, TRUSTED) is None, keep


def test_forwarded_client_splits_a_bounded_number_of_hops(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []

    def counting(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        parsed.append(value)
        return parse_address(value)

    monkeypatch.setattr("hubd.core.clientip.parse_address", counting)
    assert forwarded_client(", ".join(trusted_hops(20000)), TRUSTED) is None
    assert len(parsed) == MAX_HOPS
    assert sum(len(p) for p in parsed) <= MAX_HEADER_CHARS


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


# -- identity: zone ids, IPv6 prefixes ----------------------------------------------------------


@pytest.mark.parametrize(
    "peer", ["fe80::1%eth0", "fe80::1%eth1", "fe80::1%25lo", "fe80::1", "[fe80::1%eth0]:443"]
)
def test_zone_ids_are_dropped(peer: str) -> None:
    assert resolve(peer, trusted=()) == "fe80::1"


def test_zone_ids_are_dropped_from_forwarded_hops() -> None:
    assert resolve("10.0.0.1", "fe80::7%eth3") == "fe80::7"
    assert resolve("10.0.0.1", None, "fe80::7%eth3", header="x-real-ip") == "fe80::7"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (64, "2001:db8:1:2::/64"),
        (48, "2001:db8:1::/48"),
        (56, "2001:db8:1::/56"),
        (127, "2001:db8:1:2:aaaa:bbbb:cccc:dd00/127"),
        (128, "2001:db8:1:2:aaaa:bbbb:cccc:dd01"),
    ],
)
def test_ipv6_clients_count_per_prefix(prefix: int, expected: str) -> None:
    peer = "2001:db8:1:2:aaaa:bbbb:cccc:dd01"
    assert resolve(peer, trusted=(), ipv6_prefix=prefix) == expected
    # Every address of that network is the same client.
    assert identity(ipaddress.IPv6Address("2001:db8:1:2::ffff"), 64) == "2001:db8:1:2::/64"


def test_prefix_applies_to_forwarded_ipv6_clients_and_not_to_ipv4() -> None:
    assert resolve("10.0.0.1", "2001:db8:1:2::9", ipv6_prefix=64) == "2001:db8:1:2::/64"
    assert resolve("10.0.0.1", "198.51.100.4", ipv6_prefix=64) == "198.51.100.4"
    assert resolve("::ffff:203.0.113.7", trusted=(), ipv6_prefix=64) == "203.0.113.7"


def test_trust_is_decided_on_the_full_address_not_the_prefix() -> None:
    trusted = (ipaddress.ip_network("2001:db8:1:2::1/128"),)
    # The proxy's neighbour in its /64 is not trusted: its header is ignored.
    assert (
        resolve("2001:db8:1:2::2", "198.51.100.4", trusted=trusted, ipv6_prefix=64)
        == "2001:db8:1:2::/64"
    )
    assert resolve("2001:db8:1:2::1", "198.51.100.4", trusted=trusted) == "198.51.100.4"


def test_overlong_items_are_not_addresses() -> None:
    assert parse_address("1" * 200) is None
    assert parse_address("fe80::1%" + "z" * 200) is None
