"""The tiny interface a connection needs from its socket, and an in-memory implementation.

The core serves connections over `Transport`; the web layer adapts ASGI WebSockets to it
and tests use `MemoryTransport`, so the whole session logic runs without sockets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from hubd.core.frame import Frame


class TransportClosed(Exception):
    """The peer is gone; nothing more can be sent."""


class Transport(Protocol):
    async def send_frames(self, frames: Sequence[Frame]) -> None:
        """Send frames in order, each as one text message. Raises `TransportClosed` when
        the peer is gone."""

    async def receive(self) -> str | bytes | None:
        """The next client frame (text or binary), or None once the peer has closed."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code and reason."""


@dataclass
class Closed:
    code: int
    reason: str


class TextTransport:
    """Base for transports that send one text message at a time."""

    async def send(self, text: str) -> None:
        """Send one text frame. Raises `TransportClosed` when the peer is gone."""
        raise NotImplementedError

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            await self.send(frame.text)


class MemoryTransport(TextTransport):
    """Server side of an in-memory connection. The test drives the `client` side."""

    def __init__(self, buffer: int = 1_000_000) -> None:
        self._to_client_send, self.to_client = trio.open_memory_channel[str | Closed](buffer)
        self.from_client, self._from_client_recv = trio.open_memory_channel[str | bytes | None](
            buffer
        )
        self.closed: Closed | None = None

    async def send(self, text: str) -> None:
        if self.closed is not None:
            raise TransportClosed("closed")
        try:
            await self._to_client_send.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed("client went away") from None

    async def receive(self) -> str | bytes | None:
        try:
            return await self._from_client_recv.receive()
        except trio.EndOfChannel:
            return None

    async def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = Closed(code, reason)
            self._to_client_send.send_nowait(self.closed)
        await trio.lowlevel.checkpoint()
