"""Channel names and the parsing of `event_types` lists."""

from __future__ import annotations

import re
from collections.abc import Iterable

GLOBAL = "global"
PDFM = "pdfm"
ORCHESTRATOR = "orchestrator"
HEALTH = "health"
SYSTEM = "system"

BUILTIN_CHANNELS: tuple[str, ...] = (GLOBAL, PDFM, ORCHESTRATOR, HEALTH, SYSTEM)
# Channels whose events only the server produces (replies to client frames).
SERVER_OWNED: frozenset[str] = frozenset({HEALTH, SYSTEM})

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def valid_channel_name(name: str) -> bool:
    """Channel names are lowercase, 1-64 chars of a-z 0-9 `_` `.` `-`, starting alphanumeric."""
    return bool(_NAME.match(name))


class UnknownChannelError(ValueError):
    """One or more requested channels do not exist."""

    def __init__(self, unknown: list[str], known: Iterable[str]) -> None:
        self.unknown = unknown
        self.known = sorted(known)
        names = ", ".join(repr(u) for u in unknown)
        plural = "channels" if len(unknown) > 1 else "channel"
        super().__init__(f"unknown {plural} {names}; valid channels are: {', '.join(self.known)}")


def normalize(names: Iterable[str], known: Iterable[str] | frozenset[str]) -> list[str]:
    """Trim, lowercase and de-duplicate channel names, keeping first-seen order.

    Empty items are skipped. Raises `UnknownChannelError` listing every unknown name.
    """
    known_set = known if isinstance(known, frozenset) else frozenset(known)
    out: list[str] = []
    unknown: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name or name in out or name in unknown:
            continue
        if name in known_set:
            out.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise UnknownChannelError(unknown, known_set)
    return out


def parse_event_types(query_value: str | None, known: frozenset[str]) -> list[str]:
    """Parse the `event_types` query value into the subscription list.

    Requested channels come in request order, then `global` (always present, once).
    Missing or empty means `global` only.
    """
    requested = normalize((query_value or "").split(","), known)
    if GLOBAL in requested:
        requested.remove(GLOBAL)
    requested.append(GLOBAL)
    return requested
