"""The frames of a subscriber connection, as `Subscription` reads and writes them: the
confirmation, text frames split into envelopes, the server's notices read into `Notice`s,
and liveness (heartbeat pings, and the silence that marks a dead connection).

Everything from the server is read defensively: a field of the wrong type reads as a
neutral value (0, no names, an empty body) rather than failing the subscription."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from hubd.client.connection import last_received
from hubd.client.errors import NetworkError, ProtocolError, describe_close
from hubd.client.models import FrameError, Gap, Notice, Resumed, Unsubscribed
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL, HEALTH
from hubd.protocol.notices import CONFIRMATION

log = logging.getLogger("hubd.client")

# Ids of our heartbeat pings, to recognise the replies to them.
PING_PREFIX = "hubd-client-ping-"


class Dead(Exception):
    """No frame from the server for too long although we ping it: a dead connection."""


async def read_confirmation(
    ws: WebSocketConnection, within: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The confirmation frame, and whatever shared its text frame (batch mode). Raises
    `NetworkError` when it does not come `within` seconds or the connection
    closes first, `ProtocolError` when the first envelope is something else."""
    try:
        with trio.fail_after(within):
            message = await ws.get_message()
    except trio.TooSlowError:
        raise NetworkError("no confirmation frame after the upgrade") from None
    except ConnectionClosed as exc:
        raise NetworkError(f"closed before the confirmation: {close_text(exc)}") from None
    text = message if isinstance(message, str) else message.decode(errors="replace")
    found = envelopes(text)
    first = found[0] if found else {}
    body = first.get("body")
    if (
        first.get("message") != CONFIRMATION
        or not isinstance(body, dict)
        or "client_id" not in body
    ):
        raise ProtocolError(f"expected the confirmation frame, got {text[:200]!r}")
    return first, found[1:]


async def next_frame(ws: WebSocketConnection, dead_after: float | None) -> str:
    """The next text frame; `Dead` when no byte came for `dead_after` seconds while
    waiting (a slow consumer does not make a connection dead, nor does a large frame
    that is still arriving). None waits for ever."""
    if dead_after is None:
        message = await ws.get_message()
    else:
        since = trio.current_time()
        while True:
            alive_at = max(since, last_received(ws) or since)
            with trio.move_on_at(alive_at + dead_after) as scope:
                message = await ws.get_message()
            if not scope.cancelled_caught:
                break
            if (last_received(ws) or since) <= alive_at:
                raise Dead
    return message if isinstance(message, str) else message.decode(errors="replace")


async def send_pings(ws: WebSocketConnection, every: float) -> None:
    """Count as alive for hubd's idle timeout (events it sends do not) and have it
    answer, so that a dead connection shows as silence (see `next_frame`). Returns once
    the connection is closed."""
    sent = 0
    while True:
        await trio.sleep(every)
        sent += 1
        frame = json.dumps(
            {"event_type": HEALTH, "message": notices.PING, "id": f"{PING_PREFIX}{sent}"}
        )
        try:
            await ws.send_message(frame)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the reader sees the end too and decides what follows


def is_notice(envelope: dict[str, Any]) -> bool:
    """Whether `envelope` is one of the server's notices to this connection: a `global`
    frame addressed to it whose `message` names a notice. An admin may also publish to
    `global`, targeted or not: that is an event."""
    return (
        envelope.get("event_type") == GLOBAL
        and "client_id" in envelope
        and envelope.get("message") in notices.NOTICES
    )


def read_notice(
    envelope: dict[str, Any],
    resume_from: str | None,
    last_event_id: str | None,
    subscriptions: tuple[str, ...],
) -> Notice | None:
    """What a server notice (see `is_notice`) tells the consumer; None when it is no
    news. `resume_from` is the `since` of this connection, `last_event_id` the last event
    the consumer received, and `subscriptions` what the connection holds so far."""
    message = envelope.get("message")
    body = envelope.get("body") if isinstance(envelope.get("body"), dict) else {}
    assert isinstance(body, dict)
    if message == notices.REPLAY_COMPLETE:
        replayed = count(body.get("replayed"))
        if body.get("complete") is True:
            return Resumed(resume_from or "", replayed)
        return Gap("history_incomplete", resume_from, replayed)
    if message == notices.EVENTS_DROPPED:
        return Gap("dropped_by_server", last_event_id, dropped=count(body.get("dropped")))
    if message == notices.UNSUBSCRIBED:
        remaining = names(body.get("subscriptions"))
        if remaining is None:
            remaining = subscriptions  # unreadable: keep what we know
        return Unsubscribed(names(body.get("unsubscribed")) or (), remaining)
    ref = envelope.get("ref_id")
    ref = ref if isinstance(ref, str) else None
    # Once `health` was unsubscribed, each ping is answered with an error; the ping still
    # counts against the idle timeout, so that is no news.
    if ref is None or not ref.startswith(PING_PREFIX):
        return FrameError(ref, str(body.get("error", "")) or json.dumps(envelope))
    return None


def envelopes(text: str) -> list[dict[str, Any]]:
    """The envelopes of one text frame: one, or several (batch mode) one per line.

    Split on "\\n" only: hubd's JSON never holds a raw newline, whereas other line
    separators (U+2028, ...) may appear raw inside strings."""
    out: list[dict[str, Any]] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            log.warning("ignored a frame that is not JSON: %.200r", line)
            continue
        if isinstance(parsed, dict):
            out.append(parsed)
        else:
            log.warning("ignored a frame that is not a JSON object: %.200r", line)
    return out


def count(value: object) -> int:
    """A count from a server notice; 0 when it is not a non-negative integer."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float | str):
        try:
            return max(int(value), 0)
        except (ValueError, OverflowError):
            return 0
    return 0


def names(value: object) -> tuple[str, ...] | None:
    """Channel names from a server notice (items that are not strings left out); None
    when it is not a list."""
    if not isinstance(value, list):
        return None
    return tuple(c for c in value if isinstance(c, str))


def close_text(exc: ConnectionClosed) -> str:
    """How a closed connection ended, for a message: code and reason."""
    reason = exc.reason
    return describe_close(reason.code, reason.reason) if reason is not None else "1006"
