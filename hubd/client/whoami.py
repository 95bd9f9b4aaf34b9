"""The `whoami` conversation: on a fresh connection to the `system` channel, read the
confirmation, then ask the server for this connection's client id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from hubd.client.errors import NetworkError, ProtocolError
from hubd.protocol.channels import SYSTEM
from hubd.protocol.notices import CLIENT_ID


async def ask_client_id(ws: WebSocketConnection, within: float) -> tuple[str, tuple[str, ...]]:
    """The client id of `ws` and the channels the confirmation lists. Raises
    `NetworkError` when the answers do not come `within` seconds or the connection
    closes, `ProtocolError` when the server refuses or answers something unreadable."""
    with _deadline(within, "the client-id reply"):
        confirmation = await _next_envelope(ws)
        body = confirmation.get("body")
        listed = body.get("subscriptions") if isinstance(body, dict) else None
        subscriptions = tuple(
            c for c in (listed if isinstance(listed, list) else ()) if isinstance(c, str)
        )
        await ws.send_message(
            json.dumps({"event_type": SYSTEM, "message": CLIENT_ID, "id": "whoami"})
        )
        while True:
            reply = await _next_envelope(ws)
            if reply.get("ref_id") != "whoami":
                continue  # an event for `global` that came first
            body = reply.get("body")
            if reply.get("message") != CLIENT_ID or not isinstance(body, dict):
                raise ProtocolError(f"client-id request refused: {body!r}")
            return str(body.get(CLIENT_ID)), subscriptions


@contextmanager
def _deadline(seconds: float, what: str) -> Iterator[None]:
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise NetworkError(f"no answer within {seconds:g} s waiting for {what}") from None


async def _next_envelope(ws: WebSocketConnection) -> dict[str, Any]:
    """The next frame of a connection in the default mode (one envelope per frame)."""
    try:
        message = await ws.get_message()
    except ConnectionClosed as exc:
        raise NetworkError(f"the connection closed: {exc.reason}") from None
    text = message if isinstance(message, str) else message.decode(errors="replace")
    try:
        envelope = json.loads(text)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict):
        raise ProtocolError(f"unexpected frame {text[:200]!r}")
    return envelope
