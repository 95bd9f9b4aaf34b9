"""hubd's subclasses of Hypercorn's HTTP/1.1 protocol and WebSocket stream.

`HubdH11Protocol` serves every HTTP/1.1 connection (`connection.HubdTCPServer` puts it in
place of Hypercorn's) and turns each WebSocket stream it creates into a `HubdWSStream`.
`tests/unit/test_hypercorn_seam.py` fingerprints the upstream methods re-implemented here.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import trio
from hypercorn.protocol.events import Body, Data, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import (
    ASGIWebsocketState,
    FrameTooLargeError,
    Handshake,
    WSStream,
)
from wsproto.connection import ConnectionState as WSState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

from hubd.web.seam.native import NativeWebSocket
from hubd.web.seam.native_http import BodyBuffer

# Bytes a client may send behind its upgrade request before hubd has answered it (its
# first frames, pipelined); more closes the connection with 1008 once it is accepted.
EARLY_DATA_LIMIT = 65536
# Close reasons quote the parser's words; keep them inside a control frame (125 bytes).
_MAX_REASON = 100


class HubdWSStream(WSStream):
    """Hypercorn's WSStream with two repairs:

    - Bytes that arrive while the app is still deciding on the upgrade (a client that
      pipelines its first frame behind the handshake, or junk) are held, up to
      `EARLY_DATA_LIMIT`, and read as WebSocket frames once the upgrade is accepted, or
      dropped when it is refused. Hypercorn answered them with a second HTTP response
      that h11 refuses (`LocalProtocolError`, pgjones/hypercorn#225).
    - A malformed client frame is answered with a close frame carrying wsproto's code
      (1002, 1007) instead of a bare TCP close (1006 at the client)."""

    _early: bytearray | None
    _early_overflow: bool
    _events_lock: trio.Lock

    def _adopt(self) -> None:
        self._early = bytearray()
        self._early_overflow = False
        # Early frames are fed from a task of their own; frames must still reach the app
        # in order, so one task at a time walks wsproto's events.
        self._events_lock = trio.Lock()

    async def handle(self, event: Any) -> None:
        early = self._early
        if isinstance(event, (Body, Data)) and not self.closed and early is not None:
            # Until `_accept` has fed what came early to wsproto, later bytes queue
            # behind it (the accept awaits its 101 being written).
            if self.state in (ASGIWebsocketState.HANDSHAKE, ASGIWebsocketState.CONNECTED):
                if len(early) + len(event.data) > EARLY_DATA_LIMIT:
                    self._early_overflow = True
                else:
                    early.extend(event.data)
            # Refused (or refusing): what the client sent after its request is moot.
            return
        await super().handle(event)

    async def _accept(self, message: Any) -> None:
        await super()._accept(message)
        early, self._early = self._early, None
        if self._early_overflow:
            await self._protocol_error(
                CloseReason.POLICY_VIOLATION,
                f"more than {EARLY_DATA_LIMIT} bytes sent before the upgrade was answered",
            )
            await self.send(StreamClosed(stream_id=self.stream_id))
        elif early:
            # Not here: this runs in the app's own task, and the frames go to the app
            # through a bounded queue it has not started reading yet.
            self.connection.receive_data(bytes(early))
            self.task_group.spawn(self._handle_events)

    async def _handle_events(self) -> None:
        # Hypercorn's loop, plus the branch for a CloseConnection that wsproto made up
        # from a ParseFailed (the connection is still OPEN: the peer sent no close).
        async with self._events_lock:
            if self.closed:
                return
            for event in self.connection.events():
                if isinstance(event, Message):
                    try:
                        self.buffer.extend(event)
                    except FrameTooLargeError:
                        await self._send_wsproto_event(
                            CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)
                        )
                        break
                    if event.message_finished:
                        assert self.app_put is not None
                        await self.app_put(self.buffer.to_message())
                        self.buffer.clear()
                elif isinstance(event, Ping):
                    await self._send_wsproto_event(event.response())
                elif isinstance(event, CloseConnection):
                    if self.connection.state == WSState.REMOTE_CLOSING:
                        await self._send_wsproto_event(event.response())
                    elif self.connection.state == WSState.OPEN:
                        await self._protocol_error(event.code, event.reason or "")
                    await self.send(StreamClosed(stream_id=self.stream_id))
                    break

    async def _protocol_error(self, code: int, reason: str) -> None:
        # The app is told the code and reason, and its `closed` log line says them.
        short = reason[:_MAX_REASON]
        await self._send_wsproto_event(CloseConnection(code=code, reason=short))
        if self.app_put is not None:
            # The app hears the code first; Hypercorn's own disconnect follows unread.
            await self.app_put({"type": "websocket.disconnect", "code": int(code), "reason": short})


class HubdH11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol, switching to HTTP/2 only when `http2` is set and
    serving WebSockets with `HubdWSStream`, or, when `native` is set, handing a WebSocket
    upgrade over to the connection's task (`upgrade`, taken by `HubdTCPServer`, which
    serves it with `native.NativeWebSocket`)."""

    http2: bool = False
    native: bool = False
    # Paths whose requests are served on the connection's task (`native_http`).
    native_paths: frozenset[str] = frozenset()
    # An upgrade request to serve natively, and its handshake: set by `_create_stream`.
    upgrade: tuple[Any, Handshake] | None = None
    # A request to serve natively (its body in `self.stream`, a `BodyBuffer`).
    request: Any = None

    def take_request(self) -> Any:
        """The request waiting to be served natively, if any (once)."""
        request, self.request = self.request, None
        return request

    async def resume(self) -> None:
        """Go on with what h11 has already read (a request pipelined behind one served
        natively), as Hypercorn does once a stream has ended."""
        await self._handle_events()

    def _native_path(self, request: Any) -> bool:
        # Plain HTTP/1.1 only, and not with server names (Hypercorn answers 404 for an
        # unknown Host itself).
        if self.ssl or self.config.server_names:
            return False
        return _native_path_of(request) in self.native_paths

    def take_upgrade(self) -> tuple[Any, Handshake] | None:
        """The upgrade request waiting to be served natively, if any (once)."""
        upgrade, self.upgrade = self.upgrade, None
        return upgrade

    async def _check_protocol(self, event: Any) -> None:
        # Without HTTP/2 an `Upgrade: h2c` header is ignored (the request is answered in
        # HTTP/1.1, as RFC 9110 allows) and the h2 preface is just a bad request.
        if self.http2:
            await super()._check_protocol(event)

    async def _create_stream(self, request: Any) -> None:
        if self.native_paths and request.method == b"POST" and self._native_path(request):
            # No HTTPStream: the body's events are kept (`BodyBuffer`, which ends
            # `_handle_events` at the request's end) and the server serves the request.
            self.stream = BodyBuffer()  # type: ignore[assignment]
            self.request = request
            self.keep_alive_requests += 1
            await self.context.mark_request()
            return
        if self.native and _is_websocket_upgrade(request):
            handshake = NativeWebSocket.handshake_for(request, self.ssl, self.config)
            if handshake is not None:
                # No stream: `_handle_events` reads the request's end and stops (it
                # stops when there is no stream), and the server serves the upgrade.
                self.upgrade = (request, handshake)
                self.keep_alive_requests += 1
                await self.context.mark_request()
                return
        await super()._create_stream(request)
        if type(self.stream) is WSStream:
            self.stream.__class__ = HubdWSStream
            assert isinstance(self.stream, HubdWSStream)
            self.stream._adopt()


def _native_path_of(request: Any) -> str:
    return unquote(request.target.partition(b"?")[0].decode("ascii"))


def _is_websocket_upgrade(request: Any) -> bool:
    """Hypercorn's test for a WebSocket upgrade (`H11Protocol._create_stream`)."""
    upgrade = connection = ""
    for name, value in request.headers:
        if name == b"upgrade":  # h11 lower-cases header names
            upgrade = value.decode("latin1").strip()
        elif name == b"connection":
            connection = value.decode("latin1").strip()
    return (
        request.method.upper() == b"GET"
        and upgrade.lower() == "websocket"
        and any(token.strip() == "upgrade" for token in connection.lower().split(","))
    )


__all__ = ["EARLY_DATA_LIMIT", "HubdH11Protocol", "HubdWSStream"]
