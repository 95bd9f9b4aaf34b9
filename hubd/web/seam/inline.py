"""What the requests served on the connection's own task share (`native` and
`native_http`): running the ASGI app there, and writing a whole response or frame."""

from __future__ import annotations

import os
from time import time
from typing import Any

import trio
from hypercorn.app_wrappers import ASGIWrapper


class OnConnection:
    """What a request served on the connection's task holds of the connection: hubd's
    `HubdTCPServer` (its config, stream and send lock), hubd's HTTP/1.1 protocol, and the
    socket's descriptor (-1 for a stream without one: TLS, tests' in-memory streams)."""

    __slots__ = ("_config", "_fd", "_h11", "_lock", "_server", "_start", "_stream")

    def __init__(self, server: Any, protocol: Any) -> None:
        self._server = server
        self._h11 = protocol
        self._config = server.config
        self._stream = stream = server.stream
        self._lock: trio.Lock = server.send_lock
        # Written straight to the socket's file descriptor when the socket takes it.
        self._fd: int = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._start = time()  # for Hypercorn's access log


async def run_app(app: Any, scope: Any, receive: Any, send: Any, config: Any) -> None:
    """Run the ASGI `app` on this task, as Hypercorn's app task does: an exception is
    logged (its error log, throttled by hubd) and ends the app, a cancellation passes."""
    try:
        if isinstance(app, ASGIWrapper):
            # What the wrapper does, one frame less for the connection to keep.
            inner: Any = app.app
            await inner(scope, receive, send)
        else:
            await app(scope, receive, send, trio.to_thread.run_sync, trio.from_thread.run)
    except trio.Cancelled:
        raise
    except Exception:
        await config.log.exception("Error in ASGI Framework")


async def write_whole(fd: int, stream: Any, lock: trio.Lock, data: bytes) -> None:
    """Write all of `data`, whole and in order with every other write to `stream`: at
    once to its descriptor `fd` when the socket takes it and nobody holds `lock` (no lock
    taken and no scheduling round: a write that does not wait cannot interleave), else the
    rest (or all, for a stream without a descriptor, `fd` < 0) with `send_all` under the
    lock, shielded so that no cancellation leaves it half written. Raises
    `trio.ClosedResourceError` when the socket was closed under the caller (its number
    may be another connection's by now), and what `send_all` raises."""
    if fd >= 0 and not lock.locked():
        if stream.socket.fileno() != fd:
            raise trio.ClosedResourceError("the connection is closed")
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            written = 0
        if written == len(data):
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        # Free (looked at above, nothing has run since): taken at once.
        lock.acquire_nowait()
        try:
            with trio.CancelScope(shield=True):
                await stream.send_all(memoryview(data)[written:])
        finally:
            lock.release()
        return
    async with lock:
        if fd >= 0 and stream.socket.fileno() != fd:
            raise trio.ClosedResourceError("the connection is closed")
        with trio.CancelScope(shield=True):
            await stream.send_all(data)


__all__ = ["OnConnection", "run_app", "write_whole"]
