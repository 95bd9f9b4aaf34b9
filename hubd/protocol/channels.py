"""Channel names and the parsing of `event_types` lists."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from hubd.protocol.quoting import quoted

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


# Unknown names an error message repeats; the others are only counted ("and 7 more").
UNKNOWN_LISTED = 5


class UnknownChannelError(ValueError):
    """One or more requested channels do not exist.

    `unknown` holds every unknown name; the message quotes the first `UNKNOWN_LISTED`,
    each cut to `QUOTE_LIMIT` characters (see `quoted`), and counts the rest."""

    def __init__(self, unknown: list[str], known: Iterable[str]) -> None:
        self.unknown = unknown
        self.known = sorted(known)
        names = ", ".join(quoted(u) for u in unknown[:UNKNOWN_LISTED])
        if len(unknown) > UNKNOWN_LISTED:
            names += f" and {len(unknown) - UNKNOWN_LISTED} more"
        plural = "channels" if len(unknown) > 1 else "channel"
        super().__init__(f"unknown {plural} {names}; valid channels are: {', '.join(self.known)}")


class TooManyChannelsError(ValueError):
    """A request lists more channel names than its limit allows."""

    def __init__(self, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(f"{count} channel names listed; at most {limit} are allowed")


def count_names(names: Sequence[str]) -> int:
    """How many items of `names` are not empty (`a,,b` lists two names).

    One C-speed pass (`list.count`): it runs before anything else reads a long list."""
    return len(names) - names.count("")


def check_count(names: Sequence[str], limit: int) -> None:
    """Raise `TooManyChannelsError` if `names` holds more than `limit` non-empty items."""
    if len(names) > limit and (count := count_names(names)) > limit:
        raise TooManyChannelsError(count, limit)


def normalize(
    names: Sequence[str],
    known: Iterable[str] | frozenset[str],
    limit: int | None = None,
) -> list[str]:
    """Trim, lowercase and de-duplicate channel names, keeping first-seen order.

    Empty items are skipped. With `limit`, more than `limit` non-empty items raise
    `TooManyChannelsError` before any name is read. Raises `UnknownChannelError` naming
    the unknown names (all of them in its `unknown`). Linear in `len(names)`."""
    if limit is not None:
        check_count(names, limit)
    known_set = known if isinstance(known, frozenset) else frozenset(known)
    out: list[str] = []
    unknown: list[str] = []
    # A set for the duplicate check: a list would make a long request quadratic.
    seen: set[str] = set()
    # filter() drops empty items at C speed: a long list of them costs no Python loop.
    for raw in filter(None, names):
        name = raw.strip().lower()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in known_set:
            out.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise UnknownChannelError(unknown, known_set)
    return out


def parse_event_types(
    query_value: str | None, known: frozenset[str], limit: int | None = None
) -> list[str]:
    """Parse the `event_types` query value into the subscription list.

    Requested channels come in request order, then `global` (always present, once).
    Missing or empty means `global` only. With `limit`, more than `limit` names raise
    `TooManyChannelsError` (see `normalize`).
    """
    requested = normalize((query_value or "").split(","), known, limit)
    if GLOBAL in requested:
        requested.remove(GLOBAL)
    requested.append(GLOBAL)
    return requested
