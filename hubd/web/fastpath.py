"""Direct frame writes for WebSockets served by Hypercorn.

Through plain ASGI every event costs one ASGI message, one wsproto frame build and one
locked, shielded `send_all`. Server frames are unmasked and hubd sends each message in one
frame, so a frame is the same bytes for every subscriber: hubd builds it once per event
and writes all the frames queued for a connection with one write through the very same
Hypercorn stream (whose lock keeps writes whole and ordered with Hypercorn's own pongs and
close frames). It is used only when the ASGI `send` callable is bound to Hypercorn's
`WSStream` (checked by duck-typing); with any other server, or with compression on, hubd
uses the plain ASGI path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from hypercorn.protocol.events import Data as _Data

    Data: Any = _Data
except ImportError:  # a Hypercorn that moved its internals: plain ASGI path only
    Data = None

from hubd.core.frame import Frame
from hubd.core.transport import TransportClosed
from hubd.web.asgi_transport import AsgiTransport

_NEEDED = ("send", "stream_id", "closed", "handshake")


def hypercorn_stream(send: Any) -> Any | None:
    """The Hypercorn WSStream behind an ASGI `send`, or None if it is not one."""
    stream = getattr(send, "__self__", None)
    if Data is None or stream is None or type(stream).__name__ != "WSStream":
        return None
    if not all(hasattr(stream, name) for name in _NEEDED):
        return None
    return stream


def refuse_compression(stream: Any) -> None:
    """Make the coming accept answer without permessage-deflate (whatever the client
    offered): compression multiplies per-delivery CPU and is off unless configured."""
    stream.handshake.extensions = None


class HypercornTransport(AsgiTransport):
    """ASGI for receiving and closing; pre-built frames written straight to the stream."""

    __slots__ = ("_stream",)

    def __init__(self, receive: Any, send: Any, stream: Any) -> None:
        super().__init__(receive, send)
        self._stream = stream

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        stream = self._stream
        if self._closed or stream.closed:
            self._closed = True
            raise TransportClosed("closed")
        data = frames[0].wire if len(frames) == 1 else b"".join([f.wire for f in frames])
        await stream.send(Data(stream_id=stream.stream_id, data=data))
        if stream.closed:  # the write found the peer gone
            self._closed = True
            raise TransportClosed("peer went away")
