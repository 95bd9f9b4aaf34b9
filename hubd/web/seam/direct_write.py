"""Direct frame writes for WebSockets served by Hypercorn.

Through plain ASGI every event costs one ASGI message, one wsproto frame build and one
locked, shielded `send_all`. Server frames are unmasked and hubd sends each message in one
frame, so a frame is the same bytes for every subscriber: hubd builds it once per event
and writes all the frames queued for a connection with one write through the very same
Hypercorn stream (whose lock keeps writes whole and ordered with Hypercorn's own pongs and
close frames). It is used only when the ASGI `send` callable is bound to Hypercorn's
`WSStream` over its `H11Protocol` (as `hubd.web.seam.worker.serve` serves every HTTP/1.1
connection); with any other server, HTTP/2, or with compression on, hubd uses the plain
ASGI path. `tests/unit/test_hypercorn_seam.py` checks that the direct path is the one a
real connection gets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import trio
from hypercorn.protocol.events import Data
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream

from hubd.core.frame import Frame
from hubd.core.session import Session
from hubd.core.transport import TransportClosed
from hubd.web.asgi_transport import AsgiTransport

_NEEDED = ("send", "stream_id", "closed", "handshake")


def hypercorn_stream(send: Any) -> Any | None:
    """The Hypercorn WSStream (hubd's subclass of it, `seam.protocol.HubdWSStream`) behind
    an ASGI `send`, or None if it is not one. `tests/unit/test_hypercorn_seam.py` checks
    that a connection served by `seam.worker.serve` is one."""
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    if not all(hasattr(stream, name) for name in _NEEDED):
        return None
    return stream


def expected_write_path(tls: bool, compression: bool) -> str:
    """The write path WebSocket connections are set up to take, for the start line:
    "direct" over plain TCP without compression, else "asgi". Each connection's
    `connected` line says which one it actually got (`write=`), and an end-to-end test
    fails if a real connection does not get "direct": a Hypercorn upgrade that changed
    what this module relies on shows there, not as a silent 16x slowdown."""
    return "asgi" if tls or compression else "direct"


def refuse_compression(stream: Any) -> None:
    """Make the coming accept answer without permessage-deflate (whatever the client
    offered): compression multiplies per-delivery CPU and is off unless configured."""
    stream.handshake.extensions = None


def _tcp_server(stream: Any) -> Any | None:
    """Hypercorn's TCPServer behind a WSStream served over plain HTTP/1.1 TCP, or None
    (HTTP/2, TLS, another layout): the owner of the socket and of the lock that keeps
    every write to it whole."""
    proto = getattr(stream.send, "__self__", None)
    if not isinstance(proto, H11Protocol):
        return None
    server = getattr(getattr(proto, "send", None), "__self__", None)
    if not isinstance(getattr(server, "send_lock", None), trio.Lock):
        return None
    if not isinstance(getattr(server, "stream", None), trio.SocketStream):
        return None
    return server


class HypercornTransport(AsgiTransport):
    """ASGI for receiving and closing; pre-built frames written straight to the stream.

    Over plain TCP the frames are written to the socket at once when it takes them (the
    common case): no task switch and no Hypercorn machinery per write. What the kernel
    does not take at once is sent, still under Hypercorn's send lock, by `send_all`."""

    __slots__ = ("_fd", "_lock", "_sock_stream", "_stream", "_stream_send")

    def __init__(self, receive: Any, send: Any, stream: Any) -> None:
        super().__init__(receive, send)
        self._stream = stream
        # Hypercorn's own write path, kept before `attach` wraps `stream.send`.
        self._stream_send = stream.send
        server = _tcp_server(stream)
        self._lock: trio.Lock | None = server.send_lock if server is not None else None
        self._sock_stream: trio.SocketStream | None = server.stream if server else None
        self._fd = self._sock_stream.socket.fileno() if self._sock_stream else -1

    @property
    def direct(self) -> bool:
        """Whether frames go straight to the socket (plain TCP under hubd's server)."""
        return self._lock is not None

    def attach(self, session: Session) -> None:
        """Let the hub write to this connection directly, and route Hypercorn's own
        frames (pongs, close) through the session's queue whenever hubd has bytes queued
        or in flight, so that nothing can land inside a partly written frame."""
        super().attach(session)
        if self._lock is None:
            return
        session.write_nowait = self.try_write
        original = self._stream_send

        async def send(event: Any) -> None:
            if isinstance(event, Data) and (session.mailbox or session.writing):
                # Behind hubd's bytes, in order. If the queue is already closed the
                # connection is going away: the control frame is dropped rather than
                # risk splitting a frame on the wire.
                session.mailbox.put(Frame.wire_bytes(bytes(event.data)))
                return
            await original(event)

        self._stream.send = send

    def try_write(self, data: bytes) -> int:
        """Write without blocking if nobody else is writing; return the bytes the kernel
        took (0: nothing written, the caller queues the frame instead)."""
        lock = self._lock
        if lock is None or lock.locked() or self._closed or self._stream.closed:
            return 0
        lock.acquire_nowait()
        try:
            return os.write(self._fd, data)
        except OSError:  # BlockingIOError (full buffer) or the peer is gone: the writer
            return 0  # task will find out and report it
        finally:
            lock.release()

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        stream = self._stream
        if self._closed or stream.closed:
            self._closed = True
            raise TransportClosed("closed")
        data = frames[0].wire if len(frames) == 1 else b"".join([f.wire for f in frames])
        lock = self._lock
        if lock is None or self._sock_stream is None or lock.locked():
            await self._stream_send(Data(stream_id=stream.stream_id, data=data))
        else:
            # Taking the lock before writing means no other writer (Hypercorn's pongs and
            # close frames) can slip in between a partial write and its remainder.
            lock.acquire_nowait()
            try:
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:
                    written = 0
                if written < len(data):
                    with trio.CancelScope(shield=True):  # as Hypercorn's own writes are
                        await self._sock_stream.send_all(memoryview(data)[written:])
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                self._closed = True
                raise TransportClosed("peer went away") from None
            finally:
                lock.release()
            # No scheduling round here: the writer yields before its next write, if any.
            await trio.lowlevel.checkpoint_if_cancelled()
        if stream.closed:  # the write found the peer gone
            self._closed = True
            raise TransportClosed("peer went away")


__all__ = ["HypercornTransport", "expected_write_path", "hypercorn_stream", "refuse_compression"]
