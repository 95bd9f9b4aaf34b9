"""`Transport` over a plain ASGI WebSocket connection."""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from hubd.core.close_codes import CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR
from hubd.core.session import Session
from hubd.core.transport import TextTransport, TransportClosed

# Close codes the server sends when the client broke the WebSocket protocol (see
# hubd.web.seam): the session ends with that code and the parser's reason, not as if
# the client had closed.
_PROTOCOL_CODES = frozenset({CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_POLICY})


class AsgiTransport(TextTransport):
    """`Transport` over an ASGI WebSocket connection."""

    __slots__ = ("_closed", "_receive", "_send", "_session")

    def __init__(self, receive: Any, send: Any) -> None:
        self._receive = receive
        self._send = send
        self._closed = False
        self._session: Session | None = None

    def attach(self, session: Session) -> None:
        """Record why `session` ended when the server closed it for a protocol error."""
        self._session = session

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
        code = message.get("code")
        if code in _PROTOCOL_CODES and self._session is not None:
            # The close frame is already sent; this only names the reason.
            self._session.request_close(int(code), str(message.get("reason") or ""))
        return None  # websocket.disconnect

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
