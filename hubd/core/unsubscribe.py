"""Unsubscribing a client's channels on its owner's request (`POST /v1/ws/unsubscribe`)."""

from __future__ import annotations

from dataclasses import dataclass

from hubd.core import admission
from hubd.core.auth import Principal
from hubd.core.hub import Hub
from hubd.protocol.channels import GLOBAL


@dataclass(frozen=True, slots=True)
class UnsubscribeResult:
    client_id: str
    unsubscribed: list[str]
    ignored: list[str]
    subscriptions: list[str]


def requested_channels(hub: Hub, channels: list[str]) -> list[str]:
    """The channels an unsubscribe request names, normalized (see
    `admission.unsubscribe_channels`: 400 for a bad list)."""
    return admission.unsubscribe_channels(
        channels, hub.channels, hub.settings.max_channels_per_request
    )


def unsubscribe(
    hub: Hub, principal: Principal, client_id: str, channels: list[str]
) -> UnsubscribeResult:
    """Remove channels from a client's subscriptions on `hub`; the client is told with an
    `unsubscribed` notice. `global` is never removed; channels it lacks are `ignored`.

    Raises `HubError`: 400 unknown channel or only `global` requested, 404 unknown
    client, 403 the client belongs to another principal (admins may act on anyone)."""
    requested = requested_channels(hub, channels)
    session = hub.find(client_id)
    admission.check_owner(principal, session.principal.name, client_id)
    removed: list[str] = []
    ignored: list[str] = []
    for channel in requested:
        if channel == GLOBAL or channel not in session.subscriptions:
            ignored.append(channel)
        else:
            removed.append(channel)
    hub.remove_channels(session, removed)
    return UnsubscribeResult(
        client_id=client_id,
        unsubscribed=removed,
        ignored=ignored,
        subscriptions=list(session.subscriptions),
    )
