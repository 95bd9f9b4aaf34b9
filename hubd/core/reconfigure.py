"""A reload reaching the running hub: what its settings may change (the rest waits for a
restart), and connections whose credentials changed or went away."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from hubd.core.auth import Principal
from hubd.core.close_codes import CLOSE_REVOKED
from hubd.settings import HubSettings

if TYPE_CHECKING:  # the hub applies restart_only itself: a run-time import would be a cycle
    from hubd.core.hub import Hub


def restart_only(current: HubSettings, new: HubSettings) -> tuple[HubSettings, list[str]]:
    """`new` with the values that only a restart may change put back to `current`, and a
    sentence per value kept (naming its key): removing a channel (open connections and
    history refer to it) and `hub.compression` (negotiated at each handshake)."""
    kept: list[str] = []
    removed = current.all_channels - new.all_channels
    if removed:
        kept.append(
            "hub.channels: removing "
            + ", ".join(repr(c) for c in sorted(removed))
            + " needs a restart; the channel list is unchanged"
        )
        new = msgspec.structs.replace(new, channels=list(current.channels))
    if new.compression != current.compression:
        kept.append("hub.compression: a change needs a restart")
        new = msgspec.structs.replace(new, compression=current.compression)
    return new, kept


def revoke(hub: Hub, lookup: Callable[[Principal], Principal | None]) -> tuple[int, int]:
    """Re-check every connection's credential on `hub` after a reload. `lookup` returns the
    principal now configured for a connection's credential, or None if it is gone.

    Gone, or no longer allowed to subscribe: closed with 4401. Still there: the
    connection takes the new principal, and loses (with an `unsubscribed` notice) the
    channels its new allow-list no longer admits. Returns (closed, narrowed)."""
    closed = narrowed = 0
    for session in list(hub.sessions.values()):
        if session.close_code is not None:
            continue
        now = lookup(session.principal)
        if now is None or not now.can_subscribe:
            session.request_close(CLOSE_REVOKED, "credentials revoked")
            closed += 1
            continue
        session.principal = now
        denied = [c for c in session.subscriptions if not now.allows(c)]
        if denied:
            hub.remove_channels(session, denied)
            narrowed += 1
    return closed, narrowed
