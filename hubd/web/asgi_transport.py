"""`Transport` over a plain ASGI WebSocket connection."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from hubd.core.transport import TextTransport, TransportClosed


class AsgiTransport(TextTransport):
    """`Transport` over an ASGI WebSocket connection."""

    __slots__ = ("_closed", "_receive", "_send")

    def __init__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        self._send = send
        self._closed = False

    async def send(self, text: str) -> None:
        if self._closed:
            raise TransportClosed("closed")
        try:
            await self._send({"type": "websocket.send", "text": text})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._closed = True
            raise TransportClosed(str(exc)) from None

    async def receive(self) -> str | bytes | None:
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            return text if text is not None else bytes(message.get("bytes") or b"")
        self._closed = True
        return None  # websocket.disconnect

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
