"""Value types and checks shared by the sections of the configuration."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

import msgspec

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


def unique(values: list[str], path: str) -> None:
    """Raise `ValueError` naming `.path` when `values` lists an item twice."""
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f".{path} lists {v!r} twice")
        seen.add(v)


def parse_listen(value: str) -> tuple[str, int]:
    """Parse `host:port` or `[v6]:port` into (host, port). Port 0 picks a free port."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f"listen address {value!r} must look like 'host:port' or '[v6]:port'")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"listen address {value!r} has port {port}; ports are 0-65535")
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"listen address {value!r}: {host!r} is not an IPv6 address") from None
    return host, port
