"""Which IP address a connection counts as, for the one-connection-per-IP rule."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(value: str) -> Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[v6]" or "[v6]:port"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "v4:port"
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Address, networks: Sequence[Network]) -> bool:
    return any(addr in net for net in networks)


def resolve_client_ip(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    trusted: Sequence[Network],
) -> str:
    """Return the client IP a connection counts as.

    It is the socket peer, unless the peer is a trusted proxy: then the right-most
    `X-Forwarded-For` address that is not itself a trusted proxy, or else `X-Real-IP`,
    or else the peer itself.
    Headers from untrusted peers are ignored, so they cannot be used to dodge the limit.
    """
    peer_addr = _parse(peer) if peer else None
    if peer_addr is None:
        return peer or "unknown"
    if not trusted or not _trusted(peer_addr, trusted):
        return str(peer_addr)
    if forwarded_for:
        hops = [a for a in (_parse(h) for h in forwarded_for.split(",")) if a is not None]
        for addr in reversed(hops):
            if not _trusted(addr, trusted):
                return str(addr)
    if real_ip:
        real = _parse(real_ip)
        if real is not None:
            return str(real)
    return str(peer_addr)
