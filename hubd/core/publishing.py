"""Publish requests: decode, check every event, then publish all of them or none."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from hubd.core.auth import Principal
from hubd.core.errors import HubError
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.session import Session
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL, SERVER_OWNED
from hubd.protocol.envelope import PublishEvent, encode_bytes
from hubd.protocol.jsondepth import MAX_JSON_DEPTH, too_deep
from hubd.protocol.quoting import quoted

MAX_BATCH = 1000

_request_decoder = msgspec.json.Decoder(PublishEvent | list[PublishEvent])


@dataclass(frozen=True, slots=True)
class Checked:
    """One event that passed every check, ready to publish."""

    channel: str
    event: PublishEvent
    # The target connection when it is on this node; `event.client_id` names it otherwise.
    target: Session | None


@dataclass(frozen=True, slots=True)
class RemoteClient:
    """A connection held by another node, as the backplane knows it."""

    client_id: str
    principal: str
    subscriptions: list[str]


@dataclass(frozen=True, slots=True)
class PublishResult:
    ids: list[str]
    batch: bool

    def response(self) -> dict[str, object]:
        """The 202 body: `{"id": ..}` for one event, `{"ids": [..]}` for a batch."""
        return {"ids": self.ids} if self.batch else {"id": self.ids[0]}


def _too_deep() -> HubError:
    return HubError(
        400,
        "too_deep",
        f"the request body nests JSON arrays and objects more than {MAX_JSON_DEPTH} levels "
        f"deep; at most {MAX_JSON_DEPTH} are allowed",
    )


def decode_request(payload: bytes) -> tuple[list[PublishEvent], bool]:
    """Decode a publish body: one event object or an array of them. Raises `HubError(400)`:
    `too_deep` when arrays and objects nest more than `MAX_JSON_DEPTH` levels (checked
    on the bytes before decoding, since the decoder recurses once per level)."""
    if not payload.strip():
        raise HubError(
            400, "bad_request", "the request body is empty; send a JSON event object or an array"
        )
    if too_deep(payload):
        raise _too_deep()
    try:
        decoded = _request_decoder.decode(payload)
    except RecursionError:
        # The check above is exact for JSON; this is the backstop for malformed input it
        # might read differently from the decoder.
        raise _too_deep() from None
    except msgspec.ValidationError as exc:
        raise HubError(400, "invalid_event", _describe(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise HubError(400, "bad_request", f"the request body is not valid JSON ({exc})") from None
    if isinstance(decoded, list):
        if not decoded:
            raise HubError(400, "bad_request", "the event array is empty; send 1 to 1000 events")
        if len(decoded) > MAX_BATCH:
            raise HubError(
                400,
                "batch_too_large",
                f"the batch holds {len(decoded)} events; at most {MAX_BATCH} are allowed",
            )
        return decoded, True
    return [decoded], False


_KINDS = {
    "str": "a string",
    "int": "a number",
    "float": "a number",
    "bool": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def _describe(detail: str) -> str:
    m = re.match(r"^(?P<what>.*?)(?: - at `(?P<at>[^`]*)`)?$", detail, re.S)
    what = m["what"] if m else detail
    at = (m["at"] if m else None) or "$"
    where = "" if at == "$" else f" (at {at})"
    if f := re.match(r"^Object missing required field `(\w+)`$", what):
        return f"event is missing the required field '{f[1]}'{where}"
    # Greedy, and across lines: the name is the client's, backquotes and all.
    if f := re.match(r"^Object contains unknown field `(.+)`$", what, re.S):
        return (
            f"event has unknown field {quoted(f[1])}{where}; allowed fields are event_type, "
            "message, body, client_id"
        )
    if what.startswith("Expected `object | array`"):
        return "the body must be a JSON event object or an array of them"
    if f := re.match(r"^Expected `([^`]+)`, got `(\w+)`$", what):
        field = at.rsplit(".", 1)[-1]
        kind = _KINDS.get(f[1].replace(" | null", ""), f[1])
        return f"event field '{field}' must be {kind}, got {_KINDS.get(f[2], f[2])}{where}"
    return f"invalid event: {quoted(what)}{where}"


def _check(
    hub: Hub,
    principal: Principal,
    index: int,
    event: PublishEvent,
    batch: bool,
    remote: Mapping[str, RemoteClient],
) -> Checked:
    where = f"event [{index}]: " if batch else ""
    channel = event.event_type.strip().lower()
    if channel not in hub.channels:
        valid = ", ".join(sorted(hub.channels - SERVER_OWNED))
        raise HubError(
            400,
            "unknown_channel",
            f"{where}unknown event_type {quoted(event.event_type)}; "
            f"publishable channels are: {valid}",
        )
    if channel in SERVER_OWNED:
        raise HubError(
            400,
            "server_owned_channel",
            f"{where}channel {channel!r} is written by the server only and cannot be published to",
        )
    if not event.message.strip():
        raise HubError(400, "invalid_event", f"{where}'message' must be a non-empty string")
    if channel == GLOBAL and not principal.is_admin:
        raise HubError(
            403,
            "forbidden",
            f"{where}publishing to 'global' needs the admin role; "
            f"principal {principal.name!r} does not have it",
        )
    if not principal.allows(channel):
        raise HubError(
            403,
            "forbidden",
            f"{where}principal {principal.name!r} may not publish to {channel!r}",
        )
    target = None
    if event.client_id is not None:
        target = _check_target(hub, where, channel, event.client_id, remote)
    return Checked(channel, event, target)


def _check_target(
    hub: Hub, where: str, channel: str, client_id: str, remote: Mapping[str, RemoteClient]
) -> Session | None:
    """An event addressed to `client_id`: the session when it is connected here (None when
    it is connected to another node). 404 when no node has it, 409 when it is not
    subscribed to `channel`."""
    target = hub.sessions.get(client_id)
    elsewhere = remote.get(client_id)
    if target is not None:
        subscriptions = target.subscriptions
    elif elsewhere is not None:
        subscriptions = elsewhere.subscriptions
    else:
        raise HubError(
            404,
            "unknown_client",
            f"{where}no connected client has client_id {quoted(client_id)}",
        )
    if channel not in subscriptions:
        raise HubError(
            409,
            "not_subscribed",
            f"{where}client {quoted(client_id)} is not subscribed to {channel!r}; "
            f"its channels are: {', '.join(subscriptions)}",
        )
    return target


def check_request(
    hub: Hub,
    principal: Principal,
    events: list[PublishEvent],
    batch: bool,
    remote: Mapping[str, RemoteClient] | None = None,
) -> list[Checked]:
    """Every check of a decoded publish request, all before anything is published.
    `remote` holds the targeted clients that live on other nodes. Raises `HubError`."""
    if hub.draining:
        raise HubError(
            503, "draining", "the server is shutting down and accepts no events; retry elsewhere"
        )
    if not principal.can_publish:
        raise HubError(
            403,
            "forbidden",
            f"principal {principal.name!r} lacks the 'publisher' role needed to publish",
        )
    known = remote or {}
    return [_check(hub, principal, i, e, batch, known) for i, e in enumerate(events)]


def publish_request(hub: Hub, principal: Principal, payload: bytes) -> PublishResult:
    """Validate a whole publish request, then hand every event to every subscriber of
    this hub (the in-memory hub: no other node).

    All or nothing: if any event is refused, `HubError` is raised and none is published.
    Returns once each event sits in every current subscriber's mailbox."""
    events, batch = decode_request(payload)
    checked = check_request(hub, principal, events, batch)
    return PublishResult(publish_checked(hub, checked), batch)


def publish_checked(hub: Hub, checked: list[Checked]) -> list[str]:
    """Publish checked events to this hub's subscribers; returns their ids in order."""
    accepted_at = hub.clock()
    lone = len(checked) == 1
    ids: list[str] = []
    for item in checked:
        seq, event_id = hub.ids.next()
        envelope = notices.envelope(
            item.channel,
            item.event.message,
            item.event.body,
            client_id=item.event.client_id,
            id=event_id,
        )
        hub.publish(
            item.channel,
            Frame(encode_bytes(envelope), accepted_at, item.channel, seq),
            item.target,
            # A lone event is written at once; a batch is queued so that each
            # connection's writer sends it in one write.
            immediate=lone,
            seq=seq,
        )
        ids.append(envelope.id)
    return ids
