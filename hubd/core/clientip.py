"""Which client a connection counts as, for the one-connection-per-IP rule.

The socket peer, unless it is a trusted proxy: then the one header the configuration
names (`limits.client_ip_header`). This runs before authentication on every handshake, so
the work it does is bounded whatever a client sends: X-Forwarded-For is read from the
right, at most `MAX_HOPS` hops within its last `MAX_HEADER_CHARS` characters, and no item
longer than an address is handed to `ipaddress`.

The identity is a string: an IPv4 address, an IPv6 address without its zone id (or its
network of `ipv6_prefix` bits, "2001:db8:1:2::/64": one host usually holds a whole /64,
so per-address counting would let it open millions of connections), and an IPv4-mapped
IPv6 address counts as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ClientIpHeader = Literal["x-forwarded-for", "x-real-ip"]

# X-Forwarded-For hops examined, right to left. Each trusted proxy appends one hop, so this
# is the deepest chain of trusted proxies that still finds the client; deeper, the client
# counts as the socket peer.
MAX_HOPS = 8
# Characters of X-Forwarded-For examined (its end): 8 hops of the longest address form,
# "[v6]:port" with a zone id, fit with room to spare.
MAX_HEADER_CHARS = 1024
# Longer than any address, bracketed and with a port and a zone id: not an address, and
# not worth parsing.
_MAX_ITEM_CHARS = 100


def parse_address(value: str) -> Address | None:
    """The address in one header item or socket peer, or None if it is not one.

    Accepts "v4", "v4:port", "v6", "[v6]" and "[v6]:port". A zone id ("fe80::1%eth0") is
    dropped, since any number of zone names would otherwise make distinct identities of
    one address; an IPv4-mapped IPv6 address becomes the IPv4 address."""
    value = value.strip()
    if len(value) > _MAX_ITEM_CHARS:
        return None
    if value.startswith("[") and "]" in value:  # "[v6]" or "[v6]:port"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "v4:port"
        value = value.split(":", 1)[0]
    value = value.partition("%")[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def identity(addr: Address, ipv6_prefix: int) -> str:
    """The string an address counts as: IPv4 as it is, IPv6 as its network of
    `ipv6_prefix` bits ("2001:db8:1:2::/64"), or the plain address when that is 128."""
    if isinstance(addr, ipaddress.IPv4Address) or ipv6_prefix >= 128:
        return str(addr)
    host_bits = 128 - ipv6_prefix
    network = ipaddress.IPv6Address(int(addr) >> host_bits << host_bits)
    return f"{network}/{ipv6_prefix}"


def _trusted(addr: Address, networks: Sequence[Network]) -> bool:
    return any(addr in net for net in networks)


def forwarded_client(value: str, trusted: Sequence[Network]) -> Address | None:
    """The client named by an X-Forwarded-For value a trusted proxy sent: the right-most
    hop that is not a trusted proxy, among the last `MAX_HOPS` hops in the last
    `MAX_HEADER_CHARS` characters.

    None when that finds no such hop (every hop examined is a trusted proxy, the chain is
    deeper than that, or the header is empty) or when a hop before it is not an address
    ("unknown", garbage): what lies left of a hop no trusted proxy vouched for may be
    anything the client wrote. Empty list items (", ,") are skipped, as HTTP lists allow.
    """
    if len(value) > MAX_HEADER_CHARS:
        # The cut can fall inside a hop ("203.0.113.10" → "3.0.113.10", another valid
        # address): drop the piece before the first comma.
        value = value[-MAX_HEADER_CHARS:].partition(",")[2]
    hops = value.rsplit(",", MAX_HOPS)
    if len(hops) > MAX_HOPS:
        del hops[0]  # everything left of the hops examined
    for hop in reversed(hops):
        if not hop.strip():
            continue
        addr = parse_address(hop)
        if addr is None:
            return None
        if not _trusted(addr, trusted):
            return addr
    return None


def resolve_client_ip(
    peer: str | None,
    headers: Mapping[str, str],
    trusted: Sequence[Network],
    *,
    header: ClientIpHeader,
    ipv6_prefix: int,
) -> str:
    """Return the identity (see `identity`) a connection counts as for the per-IP rule.

    `headers` are the request headers with lower-cased names. The socket `peer` counts,
    unless it is in `trusted`: then `header` names the client, "x-forwarded-for" by
    `forwarded_client`, "x-real-ip" as one address. When that header is missing or names
    no usable client, the peer counts. The other header is never read, and no header is
    read from an untrusted peer, so neither can be used to dodge the limit.
    A missing peer is "unknown"; one that is not an address counts as it is.
    """
    peer_addr = parse_address(peer) if peer else None
    if peer_addr is None:
        return peer or "unknown"
    client = peer_addr
    if trusted and _trusted(peer_addr, trusted):
        value = headers.get(header)
        if value:
            if header == "x-forwarded-for":
                named = forwarded_client(value, trusted)
            else:
                named = parse_address(value)
            if named is not None:
                client = named
    return identity(client, ipv6_prefix)


# Trusted ranges wider than these let a large part of the Internet name its own client IP.
_WIDEST_TRUSTED = {4: 8, 6: 32}
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def trusted_proxy_warnings(trusted_proxies: Sequence[str], header: ClientIpHeader) -> list[str]:
    """Warnings about `limits.trusted_proxies` (already validated) read with `header`, each
    naming the key: ranges that let anyone, or much of the Internet, set the client IP it
    counts as; ranges that can never match; X-Real-IP chosen with no proxy trusted. An
    empty list: nothing risky found."""
    warnings: list[str] = []
    if not trusted_proxies and header != "x-forwarded-for":
        warnings.append(
            f"limits.client_ip_header = {header!r} is never read: limits.trusted_proxies is "
            "empty, so every connection counts as its socket peer"
        )
    for i, cidr in enumerate(trusted_proxies):
        net = ipaddress.ip_network(cidr, strict=False)
        key = f"limits.trusted_proxies[{i}] = {cidr!r}"
        if net.prefixlen == 0:
            warnings.append(
                f"{key} trusts every IPv{net.version} address: any client can name its own "
                f"IP in {header} and dodge the one-connection-per-IP rule; list only your "
                "proxies' addresses"
            )
        elif isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_IPV4_MAPPED):
            warnings.append(
                f"{key} is an IPv4-mapped range, which never matches: peers are matched as "
                "IPv4 addresses; write the IPv4 range instead"
            )
        elif net.prefixlen < _WIDEST_TRUSTED[net.version]:
            warnings.append(
                f"{key} is wider than /{_WIDEST_TRUSTED[net.version]}: every client in it "
                f"can name its own IP in {header}; list only your proxies' addresses"
            )
    return warnings
