"""The wire vocabulary of the server's own frames: the confirmation, the notices it sends
a connection on its own, the replies to client frames, and the one builder of every
server envelope.

Server and client share these names: the server builds its frames with the constructors
below, the client recognises them by the same constants. Each constructor returns the
bytes of one WebSocket text frame; field order is `Envelope`'s declaration order and the
body's keys are in the order documented in docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hubd.protocol.channels import GLOBAL, HEALTH, SYSTEM
from hubd.protocol.envelope import Envelope, encode_bytes, new_id, utc_timestamp

# -- names ---------------------------------------------------------------------------------

# The first frame of every connection, on `global`.
CONFIRMATION = "WebSocket connection established subscribed to global by default"

# Notices: `global` events addressed to one connection (`client_id` set).
EVENTS_DROPPED = "events_dropped"
REPLAY_COMPLETE = "replay_complete"
UNSUBSCRIBED = "unsubscribed"
ERROR = "error"  # the reply to a client frame the server refused

# Client frames and the replies to them (`ref_id` echoes the frame's `id`).
PING = "ping"  # on `health`
PONG = "pong"  # on `health`
CLIENT_ID = "client-id"  # on `system`, both the request and the reply

# `body.reason` of an `events_dropped` notice (no reason: the connection's queue overflowed).
BACKPLANE_GAP = "backplane_gap"

# The `global` messages addressed to a connection that a client treats as notices rather
# than published events (an admin may also publish to `global`, targeted or not).
NOTICES: frozenset[str] = frozenset({ERROR, EVENTS_DROPPED, UNSUBSCRIBED, REPLAY_COMPLETE})

# Every notice, reply and reason name: what only this package spells out.
VOCABULARY: frozenset[str] = frozenset(
    {CONFIRMATION, *NOTICES, PING, PONG, CLIENT_ID, BACKPLANE_GAP}
)

# -- the builder ---------------------------------------------------------------------------


def envelope(
    event_type: str,
    message: str,
    body: Any = None,
    *,
    client_id: str | None = None,
    ref_id: str | None = None,
    id: str | None = None,
    timestamp: str | None = None,
) -> Envelope:
    """An envelope as the server sends it: a fresh id and the current time unless given."""
    return Envelope(
        id=new_id() if id is None else id,
        ref_id=ref_id,
        event_type=event_type,
        timestamp=utc_timestamp() if timestamp is None else timestamp,
        message=message,
        body=body,
        client_id=client_id,
    )


def _notice(client_id: str, message: str, body: object) -> bytes:
    return encode_bytes(envelope(GLOBAL, message, body, client_id=client_id))


def _reply(client_id: str, channel: str, message: str, ref_id: str | None, body: object) -> bytes:
    # A reply always carries a ref_id: the frame's id, or a fresh one when it had none.
    return encode_bytes(
        envelope(
            channel,
            message,
            body,
            client_id=client_id,
            ref_id=ref_id if ref_id is not None else new_id(),
        )
    )


# -- the frames ----------------------------------------------------------------------------


def confirmation(
    client_id: str, subscriptions: Sequence[str], batch: bool, timestamp: str
) -> bytes:
    """The first frame of a connection (not addressed: no `client_id` field)."""
    body: dict[str, object] = {"client_id": client_id, "subscriptions": list(subscriptions)}
    if batch:
        body["batch"] = True
    return encode_bytes(envelope(GLOBAL, CONFIRMATION, body, timestamp=timestamp))


def events_dropped(client_id: str, dropped: int, reason: str | None = None) -> bytes:
    """`events_dropped`: `dropped` events were (or may have been) lost; `reason` None for
    a queue overflow, else e.g. `BACKPLANE_GAP`."""
    body: dict[str, object] = {"dropped": dropped}
    if reason is not None:
        body["reason"] = reason
    return _notice(client_id, EVENTS_DROPPED, body)


def replay_complete(client_id: str, replayed: int, complete: bool) -> bytes:
    """`replay_complete`: the end of a resume's replay."""
    return _notice(client_id, REPLAY_COMPLETE, {"replayed": replayed, "complete": complete})


def unsubscribed(client_id: str, removed: Sequence[str], remaining: Sequence[str]) -> bytes:
    """`unsubscribed`: `removed` channels were taken from the connection."""
    return _notice(
        client_id, UNSUBSCRIBED, {"unsubscribed": list(removed), "subscriptions": list(remaining)}
    )


def error(client_id: str, ref_id: str | None, text: str) -> bytes:
    """`error` on `global`: the reply to a refused client frame."""
    return _reply(client_id, GLOBAL, ERROR, ref_id, {"error": text})


def pong(client_id: str, ref_id: str | None) -> bytes:
    """`pong` on `health`: the reply to a ping."""
    return _reply(client_id, HEALTH, PONG, ref_id, None)


def client_id_reply(client_id: str, ref_id: str | None) -> bytes:
    """`client-id` on `system`: the reply to a client-id request."""
    return _reply(client_id, SYSTEM, CLIENT_ID, ref_id, {CLIENT_ID: client_id})
