"""One accepted connection: Hypercorn's per-connection `TCPServer` with hubd's protocol
classes, time limits and exact header limit (`HubdTCPServer`), and the options it reads
(`ServeOptions`). `tests/unit/test_hypercorn_seam.py` fingerprints the upstream methods
re-implemented here."""

from __future__ import annotations

import contextlib
from math import inf
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from hubd.web.seam.native import NativeWebSocket
from hubd.web.seam.native_http import BodyComplete, NativeRequest
from hubd.web.seam.protocol import HubdH11Protocol


class ServeOptions:
    """What hubd asks of the server beyond Hypercorn's own `Config`."""

    __slots__ = (
        "handshake_timeout",
        "http2",
        "max_header_bytes",
        "native_paths",
        "native_websockets",
    )

    def __init__(
        self,
        handshake_timeout: float,
        max_header_bytes: int,
        http2: bool,
        native_websockets: bool = True,
        native_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.max_header_bytes = max_header_bytes
        self.http2 = http2
        # Serve WebSocket upgrades over plain HTTP/1.1 on the connection's own task
        # (`native.NativeWebSocket`); off, Hypercorn's WSStream serves them (the only
        # way with permessage-deflate).
        self.native_websockets = native_websockets
        # POST requests to these paths over plain HTTP/1.1 are served on the connection's
        # task (`native_http.NativeRequest`) instead of an app task per request.
        self.native_paths = native_paths


class IdleConnections:
    """The connections of one server with no request in flight (before their first
    request, or between keep-alive requests): they are closed at once when the server
    shuts down, as Hypercorn's idle timers close them. One per `seam.worker.serve`."""

    __slots__ = ("_servers",)

    def __init__(self) -> None:
        self._servers: set[HubdTCPServer] = set()

    def add(self, server: HubdTCPServer) -> None:
        self._servers.add(server)

    def discard(self, server: HubdTCPServer) -> None:
        self._servers.discard(server)

    def close_all(self) -> None:
        """Shutting down: every idle connection stops reading and closes."""
        for server in list(self._servers):
            server.close_idle()

    def __len__(self) -> int:
        return len(self._servers)


class HubdTCPServer(TCPServer):
    """Hypercorn's per-connection server with hubd's time and size limits."""

    def __init__(
        self,
        app: Any,
        config: Config,
        context: WorkerContext,
        state: Any,
        stream: Any,
        options: ServeOptions,
        idle: IdleConnections | None = None,
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.options = options
        self._idle = True  # no request in flight: the next bytes are a request head
        self._requests = 0
        self._head_bytes = 0  # bytes received since the current request head began
        # When the current request's head must be in: handshake_timeout from the start
        # of the connection (first request) or from its first byte (later ones).
        self._head_by = inf
        # Between keep-alive requests: when the connection closes if no request begins.
        self._keep_alive_until = inf
        self._idle_connections = idle if idle is not None else IdleConnections()
        self._shutting_down = False
        self._closing = False  # the socket is being closed: nothing more is served
        # The scope of a read that has a deadline (while idle), to end it on shutdown.
        self._read_scope: trio.CancelScope | None = None
        # hubd's HTTP/1.1 protocol, when it serves this connection (not HTTP/2).
        self._h11: HubdH11Protocol | None = None
        # The WebSocket served on this task, once there is one.
        self._native: NativeWebSocket | None = None

    async def run(self) -> None:
        # Hypercorn's TCPServer.run, with hubd's protocol classes and handshake limit, and
        # cheaper per connection: a TLS stream is recognised by its type (Hypercorn
        # enters a deadline scope and catches an AttributeError on every plain one), one
        # HTTP/1.1 protocol object is built, not two, and the first request's head is
        # timed by a deadline on the reads instead of Hypercorn's idle-timer task (a task,
        # a nursery start, two locks and a cancellation per connection: the largest of
        # the costs hubd can remove from a WebSocket handshake, docs/performance.md).
        if isinstance(self.stream, trio.SSLStream):
            try:
                with trio.fail_after(self.options.handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return
            alpn_protocol = self.stream.selected_alpn_protocol()
            sock = self.stream.transport_stream.socket
            ssl = True
        else:
            alpn_protocol = "http/1.1"
            sock = self.stream.socket
            ssl = False
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                # The arguments Hypercorn gives its protocol; HTTP/1.1 gets hubd's subclass.
                args = (
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    ssl,
                    client,
                    server,
                    self.protocol_send,
                )
                self.protocol = _wrap(args, alpn_protocol, self.options)
                inner = self.protocol.protocol
                self._h11 = inner if isinstance(inner, HubdH11Protocol) else None
                await self.protocol.initiate()
                self._head_by = trio.current_time() + self.options.handshake_timeout
                self._idle_connections.add(self)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated):
            # Hypercorn (re)starts an idle-timer task here for every request (a task, a
            # nursery start and a cancellation each time); hubd times idle connections
            # with a deadline on their reads instead (see _read_data).
            self._idle = event.idle
            self._head_bytes = 0
            if event.idle:
                self._keep_alive_until = trio.current_time() + self.config.keep_alive_timeout
                self._idle_connections.add(self)
                if self._read_scope is not None:  # the reader is waiting for the next request
                    self._read_scope.deadline = self._read_deadline()
            else:
                self._requests += 1
                self._idle_connections.discard(self)
            return
        await super().protocol_send(event)

    def close_idle(self) -> None:
        """The server is shutting down: if no request is in flight, stop reading (the
        connection then closes); one in flight is answered first, and Hypercorn does
        not keep the connection alive after it."""
        self._shutting_down = True
        if self._idle and self._read_scope is not None:
            self._read_scope.cancel()

    def _serving_websocket(self) -> bool:
        """Whether this connection is a WebSocket served by Hypercorn's stream (TLS or
        compression): its reads have no deadline, and need no scope held open."""
        h11 = self._h11
        return h11 is not None and isinstance(h11.stream, WSStream)

    def _read_deadline(self) -> float:
        """When the read that is about to start must have returned (inf: no limit)."""
        if not self._idle:
            deadline = inf  # a request in flight: the app and its own limits decide
        elif self._requests == 0 or self._head_bytes:
            deadline = self._head_by  # a request head is being read
        else:
            deadline = self._keep_alive_until  # between keep-alive requests
        if self.config.read_timeout is not None:
            deadline = min(deadline, trio.current_time() + self.config.read_timeout)
        return deadline

    async def _read_data(self) -> None:
        limit = self.options.max_header_bytes
        while True:
            size = MAX_RECV
            if self._idle:
                if self._shutting_down:
                    break
                # A request head is being read: h11 checks its size only while it is
                # incomplete and only between reads, so read no further than the limit
                # and refuse a head that has not ended by then (431).
                if self._head_bytes >= limit:
                    await self._refuse_head()
                    break
                size = min(MAX_RECV, limit - self._head_bytes)
            # A scope on every read of an HTTP request's phase: a request head, the
            # keep-alive wait (moved by protocol_send), Hypercorn's read_timeout (unset by
            # hubd). Not on a WebSocket Hypercorn's stream serves: it would hold one open
            # (about 1 KB) for as long as the connection lives.
            deadline = self._read_deadline()
            try:
                if deadline == inf and self._serving_websocket():
                    data = await self.stream.receive_some(size)
                else:
                    # Also without a deadline while a request is in flight: its end (from
                    # the app's task) puts the keep-alive deadline on this read.
                    with trio.CancelScope(deadline=deadline) as scope:
                        self._read_scope = scope
                        data = await self.stream.receive_some(size)
                    self._read_scope = None
                    if scope.cancelled_caught:
                        break  # the time is up, or the server is shutting down
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                break
            if self._idle and data:
                if self._head_bytes == 0 and self._requests > 0:
                    # The next keep-alive request has begun: its head gets the handshake
                    # limit, not what is left of the keep-alive time.
                    self._head_by = trio.current_time() + self.options.handshake_timeout
                self._head_bytes += len(data)
            # BodyComplete: a request to serve natively has all its body, served below.
            with contextlib.suppress(BodyComplete):
                await self.protocol.handle(RawData(bytes(data)))
            h11 = self._h11
            if h11 is not None and h11.upgrade is not None:
                await self._serve_native(h11)
                break
            if h11 is not None and h11.request is not None and not await self._serve_requests(h11):
                break
            if data == b"":
                break
        # The peer is gone (or its half of the connection is), the time is up, or the
        # server is shutting down: nothing more is read, and with no request in flight
        # the connection ends now.
        self._idle_connections.discard(self)
        await self.protocol.handle(Closed())

    async def _serve_native(self, protocol: HubdH11Protocol) -> None:
        """Serve the WebSocket upgrade h11 has read on this task; the connection ends
        with it."""
        upgrade = protocol.take_upgrade()
        if upgrade is not None:
            # No local keeps the request: this frame lives as long as the connection.
            native = self._native = NativeWebSocket(self, protocol, *upgrade)
            del upgrade
            await native.run(self.app)

    async def _serve_requests(self, protocol: HubdH11Protocol) -> bool:
        """Serve the request(s) h11 has read on this task, with any pipelined behind
        them. True when the connection goes on (kept alive)."""
        while (request := protocol.take_request()) is not None:
            native = NativeRequest(self, protocol, request)
            del request
            await native.run(self.app)
            del native
            if self._closing:
                return False
            with contextlib.suppress(BodyComplete):
                await protocol.resume()  # a request pipelined behind it, if complete
            if protocol.upgrade is not None:
                await self._serve_native(protocol)
                return False
        return not self._closing

    async def _refuse_head(self) -> None:
        protocol = self.protocol.protocol
        if isinstance(protocol, H11Protocol):
            # As h11 itself answers an over-long head it does catch.
            await protocol._send_error_response(431)
        await self._close()

    async def _close(self) -> None:
        self._closing = True
        self._idle_connections.discard(self)
        if self._native is not None:
            self._native.server_closing()
        # Hypercorn half-closes without its send lock: a response being written by the
        # app's task at that moment failed with BusyResourceError (a request whose body
        # stops at a FIN while its error response goes out). Half-close only when no one
        # is writing; otherwise the close below ends that write, which Hypercorn handles.
        if not self.send_lock.locked():
            self.send_lock.acquire_nowait()
            try:
                await self.stream.send_eof()
            except (
                trio.BrokenResourceError,
                trio.BusyResourceError,
                trio.ClosedResourceError,
                AttributeError,  # a TLS stream has no half-close
            ):
                pass
            finally:
                self.send_lock.release()
        await self.stream.aclose()


def _wrap(args: tuple[Any, ...], alpn_protocol: str, options: ServeOptions) -> ProtocolWrapper:
    """Hypercorn's ProtocolWrapper around hubd's HTTP/1.1 protocol (or Hypercorn's HTTP/2
    one for "h2"), built without the H11Protocol its constructor would make and discard."""
    if alpn_protocol == "h2":
        return ProtocolWrapper(*args, alpn_protocol)  # type: ignore[call-arg]
    wrapper = ProtocolWrapper.__new__(ProtocolWrapper)
    (
        wrapper.app,
        wrapper.config,
        wrapper.context,
        wrapper.task_group,
        wrapper.state,
        wrapper.ssl,
        wrapper.client,
        wrapper.server,
        wrapper.send,
    ) = args
    h11 = HubdH11Protocol(*args)
    h11.http2 = options.http2
    h11.native = options.native_websockets
    h11.native_paths = options.native_paths
    wrapper.protocol = h11
    return wrapper


__all__ = ["HubdTCPServer", "IdleConnections", "ServeOptions"]
