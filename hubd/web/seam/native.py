"""WebSockets served on the connection's own task: `NativeWebSocket`.

Through Hypercorn every WebSocket costs a second task (the ASGI app's, started by
`TaskGroup.spawn_app`), a memory channel between the two, a `WSStream` with its ASGI
scope, and for every client frame a hop through that channel and a task wake-up. hubd's
subscribe handler needs none of it: it reads client frames itself (its reader task) and
writes frames itself (`Session.write_nowait`, its writer task). So for a WebSocket upgrade
over plain HTTP/1.1 (no TLS, no permessage-deflate, no server pings) `HubdTCPServer` runs
the ASGI app inline, on the connection's task, with this object as its `receive` and
`send`; once accepted, hubd's session uses it as its `Transport`:

- the handshake is Hypercorn's own: the upgrade request is parsed and checked by h11 and
  `Handshake` (`HubdH11Protocol` hands it over instead of building a `WSStream`), the 101
  or the refusal goes out through `H11Protocol.stream_send` with Hypercorn's response
  headers, and the connection ends with the exchange, accepted or refused (as
  Hypercorn's, which never reuses a connection that asked for a WebSocket);
- client frames are read from the socket by whoever calls `receive` (the session's
  reader) and parsed by wsproto, as Hypercorn does; a client's WebSocket pings are
  answered there;
- frames are written under the connection's send lock, straight to the socket when it
  takes them (as `direct_write.HypercornTransport` does through Hypercorn's stream).

Bytes a client pipelines behind its handshake are not read while the app decides (the
connection's task is the app's): they wait in the socket, bounded by TCP flow control,
and are read as frames once the upgrade is accepted; those h11 had already read with the
request are fed to wsproto first, in order.

docs/design.md ("One task per WebSocket") has the measurements that made this the
default path. `tests/unit/test_hypercorn_seam.py` checks that a connection gets it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from time import time
from typing import Any
from urllib.parse import unquote

import h11
import trio
from hypercorn.protocol.events import Body, EndBody, Response
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.ws_stream import Handshake
from hypercorn.utils import build_and_validate_headers, suppress_body
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

from hubd.core.frame import Frame
from hubd.core.session import Session
from hubd.core.transport import TransportClosed
from hubd.web.seam.inline import OnConnection, run_app, write_whole

# Reads while a WebSocket is open: as Hypercorn's.
MAX_RECV = 2**16
# Close reasons quote the parser's words; keep them inside a control frame (125 bytes).
_MAX_REASON = 100
# Close codes that say the client broke the protocol: the session ends with that code
# and reason (its `closed` log line says them), not as if the client had closed.
_PROTOCOL_CODES = frozenset({1002, 1007, 1008, 1009})

# States, as Hypercorn's ASGIWebsocketState.
_HANDSHAKE, _RESPONSE, _HTTP_CLOSED, _CONNECTED, _CLOSED = range(5)


class _Spent:
    """Stands for h11's connection once a native upgrade is accepted (h11 is not used on
    the connection again; Hypercorn's protocol object only keeps the reference)."""

    trailing_data = (b"", False)


_SPENT = _Spent()


def _between_frames(ws: Connection) -> bool:
    """Whether wsproto holds nothing: no event, no byte of a frame, no message begun.
    (Its private state, wsproto==1.3.2 as pinned; tests/unit/test_hypercorn_seam.py
    fingerprints the code that keeps it.)"""
    proto: Any = ws._proto
    decoder = proto._frame_decoder
    return (
        not ws._events
        and decoder.header is None
        and not len(decoder.buffer)
        and proto._message_decoder.opcode is None
    )


class _Disconnect(Exception):
    """The WebSocket is over for reading: the peer closed, vanished or broke the
    protocol (`code` and `reason` say which; the close frame, if any, is already sent)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason


class NativeWebSocket(OnConnection):
    """One WebSocket upgrade served on the connection's task (see the module docstring).

    The ASGI face (`asgi_receive`, `asgi_send`) serves any ASGI app; the `Transport` face
    (`receive`, `send_frames`, `close`, `attach`, `try_write`) is what hubd's session
    uses once the upgrade is accepted."""

    __slots__ = (
        "_closed",
        "_connected_told",
        "_events",
        "_handshake",
        "_max_message",
        "_parts",
        "_ready",
        "_response",
        "_session",
        "_size",
        "_ws",
        "scope",
        "state",
    )

    def __init__(
        self, server: Any, h11_protocol: H11Protocol, request: h11.Request, handshake: Handshake
    ) -> None:
        super().__init__(server, h11_protocol)
        headers = list(request.headers)
        http_version = request.http_version.decode()
        self._handshake: Handshake | None = handshake
        path, _, query_string = request.target.partition(b"?")
        # The scope Hypercorn's WSStream builds, for the same app.
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"spec_version": "2.3", "version": "3.0"},
            "scheme": "ws",
            "http_version": http_version,
            "path": unquote(path.decode("ascii")),
            "raw_path": path,
            "query_string": query_string,
            "root_path": self._config.root_path,
            "headers": headers,
            "client": h11_protocol.client,
            "server": h11_protocol.server,
            "state": h11_protocol.connection_state.copy(),
            "subprotocols": self._handshake.subprotocols or [],
            "extensions": {"websocket.http.response": {}},
        }
        self.state = _HANDSHAKE
        self._connected_told = False
        self._response: dict[str, Any] | None = None
        self._ws: Connection | None = None
        self._events: Any = None  # the wsproto events iterator being read
        self._max_message: int = self._config.websocket_max_message_size
        self._parts: list[Any] = []  # the fragments of the message being read
        # Messages decoded without wsproto, not yet read, the next one last.
        self._ready: list[str] = []
        self._size = 0
        self._session: Session | None = None
        self._closed = False  # no more frames may be sent

    @staticmethod
    def handshake_for(request: h11.Request, ssl: bool, config: Any) -> Handshake | None:
        """The handshake of a WebSocket upgrade request that may be served natively, or
        None: plain HTTP/1.1 only, and nothing asked that only Hypercorn's stream does
        (server pings, server names). A handshake Hypercorn would refuse (bad version, no
        key) is left to it, so it answers exactly as before."""
        if ssl or config.websocket_ping_interval is not None or config.server_names:
            return None
        handshake = Handshake(list(request.headers), request.http_version.decode())
        return handshake if handshake.is_valid() else None

    # -- running the app --------------------------------------------------------------

    async def run(self, app: Any) -> None:
        """Run the ASGI app on this task until it returns, then end the exchange as
        Hypercorn does. The connection is over then, accepted or refused: Hypercorn never
        serves another request on a connection that asked for a WebSocket."""
        try:
            await run_app(app, self.scope, self.asgi_receive, self.asgi_send, self._config)
        finally:
            # As Hypercorn's `send(None)` once the app returns: a handshake never answered
            # is a 500, a WebSocket left open is closed with 1011.
            with trio.CancelScope(shield=True):
                if self.state == _HANDSHAKE:
                    await self._error_response(500)
                elif self.state == _CONNECTED:
                    await self._write_close(CloseReason.INTERNAL_ERROR, "")

    # -- the ASGI face ------------------------------------------------------------------

    async def asgi_receive(self) -> dict[str, Any]:
        if not self._connected_told:
            self._connected_told = True
            return {"type": "websocket.connect"}
        if self.state != _CONNECTED:
            # Nothing is read before the accept; after a refusal the exchange is over.
            code = 1000 if self.state in (_HTTP_CLOSED, _CLOSED) else 1006
            return {"type": "websocket.disconnect", "code": code}
        try:
            data = await self._next_message()
        except _Disconnect as gone:
            return {"type": "websocket.disconnect", "code": gone.code, "reason": gone.reason}
        if isinstance(data, str):
            return {"type": "websocket.receive", "text": data, "bytes": None}
        return {"type": "websocket.receive", "bytes": data, "text": None}

    async def asgi_send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        state = self.state
        if state == _CLOSED or (self._closed and state == _CONNECTED):
            return  # as Hypercorn: the app may finish after the close
        if kind == "websocket.accept" and state == _HANDSHAKE:
            await self._accept(message.get("subprotocol"), message.get("headers") or [])
        elif kind == "websocket.http.response.start" and state == _HANDSHAKE:
            self._response = message
        elif kind == "websocket.http.response.body" and state in (_HANDSHAKE, _RESPONSE):
            await self._send_rejection(message)
        elif kind == "websocket.send" and state == _CONNECTED:
            ws = self._ws
            assert ws is not None
            if message.get("bytes") is not None:
                data = ws.send(BytesMessage(data=bytes(message["bytes"])))
            elif isinstance(message.get("text"), str):
                data = ws.send(TextMessage(data=message["text"]))
            else:
                raise TypeError(f"{message.get('text')!r} should be a str")
            await self._send_control(data)
        elif kind == "websocket.close" and state == _HANDSHAKE:
            self.state = _HTTP_CLOSED
            await self._error_response(403)
        elif kind == "websocket.close" and state == _CONNECTED:
            await self.close(int(message.get("code", 1000)), message.get("reason") or "")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in WebSocket state {state}")

    async def _accept(self, subprotocol: str | None, extra: list[tuple[bytes, bytes]]) -> None:
        handshake = self._handshake
        assert handshake is not None
        headers: list[tuple[bytes, bytes]] = []
        if subprotocol is not None:
            if subprotocol not in (handshake.subprotocols or ()):
                raise RuntimeError(f"subprotocol {subprotocol!r} was not offered")
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        # No permessage-deflate: the native path is taken only with compression off.
        assert handshake.key is not None
        headers.append((b"sec-websocket-accept", generate_accept_token(handshake.key)))
        headers += [(b"upgrade", b"WebSocket"), (b"connection", b"Upgrade")]
        for name, value in extra:
            if name == b"sec-websocket-protocol" or name.startswith(b":"):
                raise RuntimeError(f"invalid additional header {name.decode()!r}")
            headers.append((name, value))
        self.state = _CONNECTED
        self._ws = ws = Connection(ConnectionType.SERVER)
        if extra:
            # The app's own headers: h11 validates and writes them.
            await self._h11.stream_send(
                Response(stream_id=STREAM_ID, status_code=101, headers=headers)
            )
        else:
            # The 101 as h11 writes it (its status line, these headers in this order), but
            # without its state machine and Hypercorn's locked, shielded send: nothing
            # here came from the client but the subprotocol, which it offered in a header
            # h11 has validated. h11 is not used on this connection again.
            headers += self._config.response_headers("h11")
            head = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
            try:
                await self._write(b"HTTP/1.1 101 \r\n" + head + b"\r\n")
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                # The client is gone already (as Hypercorn's send, which calls it closed,
                # not an error of the app): the session finds out at its first write.
                self._closed = True
        # What the client sent behind its handshake and h11 had already read: its first
        # frames, read before anything that is still in the socket.
        early = self._h11.connection.trailing_data[0]
        if early:
            ws.receive_data(bytes(early))
        await self._config.log.access(
            self.scope, {"status": 101, "headers": []}, time() - self._start
        )
        # Neither h11 nor the handshake is used on this connection again: what they hold
        # (the parser's state and buffers, the request's header values) goes now rather
        # than when the connection closes.
        self._h11.connection = _SPENT
        self._handshake = None

    async def _send_rejection(self, message: dict[str, Any]) -> None:
        response = self._response
        if response is None:
            raise RuntimeError("websocket.http.response.body before its start")
        if self.state == _HANDSHAKE:
            await self._h11.stream_send(
                Response(
                    stream_id=STREAM_ID,
                    status_code=int(response["status"]),
                    headers=build_and_validate_headers(response.get("headers") or []),
                )
            )
            self.state = _RESPONSE
        if not suppress_body("GET", int(response["status"])):
            await self._h11.stream_send(
                Body(stream_id=STREAM_ID, data=bytes(message.get("body", b"")))
            )
        if not message.get("more_body", False):
            self.state = _HTTP_CLOSED
            await self._h11.stream_send(EndBody(stream_id=STREAM_ID))
            await self._config.log.access(self.scope, response, time() - self._start)

    async def _error_response(self, status: int) -> None:
        await self._h11.stream_send(
            Response(
                stream_id=STREAM_ID,
                status_code=status,
                headers=[(b"content-length", b"0"), (b"connection", b"close")],
            )
        )
        await self._h11.stream_send(EndBody(stream_id=STREAM_ID))
        self.state = _HTTP_CLOSED

    # -- reading frames -----------------------------------------------------------------

    async def _next_message(self) -> str | bytes:
        """The next complete client message; pings are answered on the way. Raises
        `_Disconnect` once nothing more can be read."""
        ws = self._ws
        assert ws is not None
        # The message's parts so far live on the object, not in this frame: a receive
        # cancelled between two fragments (the reader's deadline is re-armed that way)
        # loses nothing.
        parts = self._parts
        while True:
            if self._closed:
                raise _Disconnect(CloseReason.ABNORMAL_CLOSURE)
            if self._ready:
                return self._ready.pop()  # (kept last first: see _take_simple_frames)
            events = self._events
            if events is None:
                events = self._events = ws.events()
            for event in events:
                if isinstance(event, Message):
                    parts.append(event.data)
                    self._size += len(event.data)
                    if self._size > self._max_message:
                        await self._protocol_error(
                            CloseReason.MESSAGE_TOO_BIG,
                            f"message too big: over {self._max_message} bytes",
                        )
                    if event.message_finished:
                        message = parts[0] if len(parts) == 1 else parts[0][:0].join(parts)
                        parts.clear()
                        self._size = 0
                        return message if isinstance(event, TextMessage) else bytes(message)
                elif isinstance(event, Ping):
                    await self._send_control(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        try:
                            await self._send_control(ws.send(event.response()))
                        finally:
                            self._closed = True  # even if the reply's write is cancelled
                        raise _Disconnect(event.code, event.reason or "")
                    if ws.state is ConnectionState.OPEN:
                        # Made up by wsproto from a frame it could not parse.
                        await self._protocol_error(event.code, event.reason or "")
                    raise _Disconnect(event.code, event.reason or "")
                # Pong: nothing to do.
            self._events = None
            data = await self._recv()
            if not data:
                self._closed = True
                raise _Disconnect(CloseReason.ABNORMAL_CLOSURE)
            if ws.state is not ConnectionState.OPEN and ws.state is not (
                ConnectionState.LOCAL_CLOSING
            ):
                raise _Disconnect(CloseReason.ABNORMAL_CLOSURE)
            if not parts and _between_frames(ws):
                data = self._take_simple_frames(data)
                if not data:
                    continue
            ws.receive_data(data)

    def _take_simple_frames(self, data: bytes) -> bytes:
        """Decode the complete, final, masked text frames under 126 bytes at the start of
        `data` (a client's pings: nearly every frame it sends) into `_ready`, and return
        the rest, from the first frame that is anything else, for wsproto. Called only
        between frames (wsproto holds no partial frame or message), so wsproto goes on
        from a frame boundary, and the messages it makes come after these. A frame that
        would not decode as UTF-8 is left to wsproto, which closes with its words."""
        at = 0
        end = len(data)
        ready = self._ready
        while end - at >= 6:
            length = data[at + 1] ^ 0x80  # the mask bit must be set: then < 128
            if data[at] != 0x81 or length > 125 or end - at < 6 + length:
                break
            start = at + 6
            if length:
                key = data[at + 2 : start]
                mask = (key * ((length >> 2) + 1))[:length]
                payload = int.from_bytes(data[start : start + length], "big") ^ int.from_bytes(
                    mask, "big"
                )
                try:
                    text = payload.to_bytes(length, "big").decode()
                except UnicodeDecodeError:
                    break
            else:
                text = ""
            ready.append(text)
            at = start + length
        # Kept in reverse, so that taking the next one is a pop from the end: a read of
        # 64 KiB can hold ~10,000 empty frames, and popping from the front would move the
        # rest each time.
        ready.reverse()
        return data[at:] if at else data

    async def _recv(self) -> bytes:
        """The next bytes from the client; b"" once it has closed or is gone."""
        fd = self._fd
        if fd < 0:
            try:
                return bytes(await self._stream.receive_some(MAX_RECV))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        # trio's SocketStream.receive_some without its layers (a conflict detector and
        # three wrapper frames): every idle connection is parked here for as long as it
        # is open, and each frame of the chain is memory it holds. The checkpoints are
        # trio's: a client that always has data ready still lets the others run.
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            if self._stream.socket.fileno() != fd:
                return b""  # closed under this reader: the number may be another's now
            try:
                data = os.read(fd, MAX_RECV)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except (trio.ClosedResourceError, OSError):
                    return b""
                waited = True
                continue
            except OSError:  # reset by the peer, or closed
                return b""
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    async def _protocol_error(self, code: int, reason: str) -> None:
        """Close for a client that broke the protocol, with the code and the parser's
        words, and stop reading."""
        short = reason[:_MAX_REASON]
        await self._write_close(code, short)
        raise _Disconnect(int(code), short)

    # -- the Transport face ---------------------------------------------------------------

    @property
    def direct(self) -> bool:
        """Whether frames go straight to the socket's descriptor (a TCP socket)."""
        return self._fd >= 0

    def attach(self, session: Session) -> None:
        """Serve `session`: the hub may write to this connection directly, and frames
        this object sends itself (pongs, close replies) queue behind the session's
        frames whenever it has bytes queued or in flight, so that nothing lands inside a
        partly written frame."""
        self._session = session
        session.write_nowait = self.try_write

    async def receive(self) -> str | bytes | None:
        try:
            return await self._next_message()
        except _Disconnect as gone:
            session = self._session
            if gone.code in _PROTOCOL_CODES and session is not None:
                # The close frame is already sent; this only names the reason.
                session.request_close(gone.code, gone.reason)
            return None

    def try_write(self, data: bytes) -> int:
        """Write without blocking if nobody else is writing; return the bytes the kernel
        took (0: nothing written, the caller queues the frame instead).

        Called once per delivery, so as little as can be: a write that does not wait
        cannot be interleaved with anything, so the send lock is only looked at (is a
        `send_all` holding it, with a frame half written?), not taken."""
        if self._closed or self._lock.locked() or self._fd < 0:
            return 0
        try:
            return os.write(self._fd, data)
        except OSError:  # BlockingIOError (full buffer) or the peer is gone: the writer
            return 0  # task will find out and report it

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        if self._closed:
            raise TransportClosed("closed")
        data = frames[0].wire if len(frames) == 1 else b"".join([f.wire for f in frames])
        try:
            await self._write(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self._closed = True
            raise TransportClosed("peer went away") from None

    async def close(self, code: int, reason: str) -> None:
        if self.state != _CONNECTED:
            return
        await self._write_close(code, reason)

    # -- writing ----------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        """Write all of `data`, whole and in order with every other write (see
        `inline.write_whole`); not straight to the socket once closed."""
        await write_whole(-1 if self._closed else self._fd, self._stream, self._lock, data)

    def server_closing(self) -> None:
        """The server is closing the socket: nothing more is read or written (its
        descriptor number may soon be another connection's)."""
        self._closed = True

    async def _send_control(self, data: bytes) -> None:
        """Write bytes this object made (a pong, a close reply, an app's own message):
        behind the session's frames when it has any queued or in flight; dropped when
        its queue is already closed (the connection is going away, and a split frame on
        the wire would be worse)."""
        session = self._session
        if session is not None and (session.mailbox or session.writing):
            session.mailbox.put(Frame.wire_bytes(data))
            return
        try:
            await self._write(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            self._closed = True

    async def _write_close(self, code: int, reason: str) -> None:
        """Send a close frame (once; behind the session's frames in flight, as
        `_send_control`), and nothing after it."""
        ws = self._ws
        self.state = _CLOSED
        if ws is None or self._closed:
            self._closed = True
            return
        try:
            data = ws.send(CloseConnection(code=code, reason=reason or None))
        except LocalProtocolError:
            data = b""
        if data:
            await self._send_control(data)
        self._closed = True


def native_websocket(send: Any) -> NativeWebSocket | None:
    """The `NativeWebSocket` behind an ASGI `send`, or None when the connection is served
    by Hypercorn's own stream (TLS, compression, HTTP/2, another server)."""
    owner = getattr(send, "__self__", None)
    return owner if isinstance(owner, NativeWebSocket) else None


__all__ = ["NativeWebSocket", "native_websocket"]
