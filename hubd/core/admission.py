"""The rules a request must pass before the hub acts on it: who may subscribe to what,
and who may unsubscribe whom. Plain functions that raise `HubError` naming the bad value
and what is allowed; the hub calls them before it changes anything."""

from __future__ import annotations

from collections.abc import Callable, Collection

from hubd.core.auth import Principal
from hubd.core.errors import HubError, too_many_channels
from hubd.core.history import is_event_id
from hubd.protocol.channels import (
    GLOBAL,
    TooManyChannelsError,
    UnknownChannelError,
    normalize,
    parse_event_types,
)
from hubd.protocol.quoting import quoted


def _channel_list(parse: Callable[[], list[str]]) -> list[str]:
    """A client's list of channel names, parsed by `parse`; 400 for too many names or an
    unknown one."""
    try:
        return parse()
    except TooManyChannelsError as exc:
        raise too_many_channels(exc.count, exc.limit) from None
    except UnknownChannelError as exc:
        raise HubError(400, "unknown_channel", str(exc)) from None


def check_subscriber(
    principal: Principal, event_types: str | None, channels: frozenset[str], max_channels: int
) -> list[str]:
    """The channels a subscriber asks for with `event_types`, normalized (global first).

    Raises `HubError`: 403 the principal lacks the subscriber role, 400 too many names or
    an unknown channel, 403 a channel outside the principal's allow-list."""
    if not principal.can_subscribe:
        raise HubError(
            403,
            "forbidden",
            f"principal {principal.name!r} lacks the 'subscriber' role needed to subscribe",
        )
    subscriptions = _channel_list(lambda: parse_event_types(event_types, channels, max_channels))
    denied = [c for c in subscriptions if not principal.allows(c)]
    if denied:
        allowed = ", ".join(sorted(principal.channels or ()))
        raise HubError(
            403,
            "forbidden",
            f"principal {principal.name!r} may not subscribe to "
            f"{', '.join(repr(c) for c in denied)}; its channels are: global, {allowed}",
        )
    return subscriptions


def draining() -> HubError:
    return HubError(
        503, "draining", "the server is shutting down; reconnect to another node or retry"
    )


def ip_in_use(ip: str) -> HubError:
    return HubError(
        409,
        "ip_in_use",
        f"client IP {ip} already has an open connection; one connection per IP is "
        "allowed (close it first)",
    )


def at_capacity(limit: int) -> HubError:
    return HubError(
        503,
        "at_capacity",
        f"the server holds its maximum of {limit} connections; retry later",
    )


def unknown_client(client_id: str) -> HubError:
    return HubError(404, "unknown_client", f"no connected client has client_id {quoted(client_id)}")


def check_owner(principal: Principal, owner: str, client_id: str) -> None:
    """403 unless `principal` owns the connection (by name) or is an admin."""
    if owner != principal.name and not principal.is_admin:
        raise HubError(
            403,
            "forbidden",
            f"client {quoted(client_id)} belongs to another principal; only its owner or an "
            "admin may unsubscribe it",
        )


def check_since(since: str) -> None:
    """400 unless `since` looks like an event id (whether it is known is another matter)."""
    if not is_event_id(since):
        raise HubError(
            400,
            "bad_request",
            f"since={quoted(since)} is not an event id; use the 64-hex-digit id of the last "
            "event received (or leave it out)",
        )


def unsubscribe_channels(
    channels: list[str], known: Collection[str], max_channels: int
) -> list[str]:
    """The channels an unsubscribe request names, normalized. Raises `HubError(400)`
    for more than `max_channels` names (checked first, by counting), an unknown channel,
    an empty list, or `global` alone."""
    requested = _channel_list(lambda: normalize(channels, known, max_channels))
    if not requested:
        raise HubError(400, "bad_request", "event_types must list at least one channel")
    if requested == [GLOBAL]:
        raise HubError(
            400,
            "bad_request",
            "'global' cannot be unsubscribed; list other channels to remove",
        )
    return requested
