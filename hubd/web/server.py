"""Serving the ASGI app: Hypercorn's HTTP/1.1 and WebSocket protocol code under hubd's own
accept loop and a guard around every connection.

This module and `fastpath.py` are the only places that use Hypercorn's internals
(`TCPServer`, `H11Protocol`, `WSStream`); `tests/unit/test_hypercorn_seam.py` fails when
the pinned Hypercorn changes under them. What hubd adds to Hypercorn's trio worker:

- **A failure inside one connection ends that connection only.** Hypercorn's WebSocket
  error path can raise h11's `LocalProtocolError` into the server's nursery when bytes
  arrive around a refused or not yet accepted upgrade (pgjones/hypercorn#225), which
  ends every listener. Each connection runs inside a guard that logs the failure once, at
  warning, with the peer, and closes that socket.
- **Time limits before a connection is useful.** The request line and headers must be
  complete within `server.handshake_timeout` of the connection opening, and of the first
  byte of each later keep-alive request (Hypercorn alone gives them the 75 s keep-alive).
  A connection whose peer sends FIN before a request is released at once instead of
  waiting in CLOSE_WAIT for the keep-alive timer.
- **The documented header limit.** Hypercorn reads 64 KiB at a time and h11 checks its
  limit only between reads, so up to twice `h11_max_incomplete_size` got through; reads
  while a request head is incomplete are sized so h11 sees the limit exactly (431).
- **HTTP/2 only when configured.** With `server.http2` off, ALPN offers only http/1.1 and
  `Upgrade: h2c` / the h2 preface are not switched to HTTP/2.
- **Protocol errors close with their code.** wsproto reports a malformed client frame
  (unmasked, reserved bits, unknown opcode: 1002; invalid UTF-8: 1007); Hypercorn dropped
  the TCP connection without a close frame (the client saw 1006). The close frame is sent
  with the code, the app is told the code and the reason, and the log says what happened.
- **Accept backs off on EMFILE/ENFILE/ENOMEM/ENOBUFS** and says so once per interval,
  not once per retry with a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from math import inf
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import Body, Data, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr, repr_socket_addr, wrap_app
from wsproto.connection import ConnectionState as WSState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

log = logging.getLogger("hubd.server")

# accept(2) errors that mean "out of resources now", not "this listener is broken".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# Accept retries this often while out of file descriptors (as trio's serve_listeners).
ACCEPT_BACKOFF = 0.1
# Repeated conditions (EMFILE, failing connections) are logged at most
# once per this many seconds, with a count of what happened in between.
LOG_INTERVAL = 10.0
# Bytes a client may send behind its upgrade request before hubd has answered it (its
# first frames, pipelined); more closes the connection with 1008 once it is accepted.
EARLY_DATA_LIMIT = 65536
# Close reasons quote the parser's words; keep them inside a control frame (125 bytes).
_MAX_REASON = 100


class Throttled:
    """Log a recurring condition at most once per `interval` seconds of trio time: the
    first occurrence at once, later ones as a count with the latest detail."""

    __slots__ = ("_interval", "_last", "_level", "_suppressed", "_what", "total")

    def __init__(self, what: str, level: int = logging.WARNING, interval: float = LOG_INTERVAL):
        self._what = what
        self._level = level
        self._interval = interval
        self._last = -inf
        self._suppressed = 0
        self.total = 0

    def note(self, detail: str) -> None:
        self.total += 1
        now = trio.current_time()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more = (
            f" ({self._suppressed} more in the last {now - self._last:.0f} s)"
            if self._suppressed
            else ""
        )
        self._last = now
        self._suppressed = 0
        log.log(self._level, "%s: %s%s", self._what, detail, more)


class ThrottleFilter(logging.Filter):
    """Passes at most `limit` records per `interval` seconds of trio time; the first
    record after a quiet spell says how many were held back. For Hypercorn's error log,
    whose "Error in ASGI Framework" tracebacks a client must never be able to multiply."""

    def __init__(self, limit: int = 5, interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.limit = limit
        self.interval = interval
        self._start = -inf
        self._passed = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            now = trio.current_time()
        except RuntimeError:  # logged outside the trio run (start-up, exit)
            return True
        if now - self._start >= self.interval:
            if self.suppressed:
                held = self.suppressed
                record.msg = f"{record.getMessage()} ({held} more held back before this)"
                record.args = None
            self._start, self._passed, self.suppressed = now, 0, 0
        if self._passed >= self.limit:
            self.suppressed += 1
            return False
        self._passed += 1
        return True


class ServeOptions:
    """What hubd asks of the server beyond Hypercorn's own `Config`."""

    __slots__ = ("handshake_timeout", "http2", "max_header_bytes")

    def __init__(self, handshake_timeout: float, max_header_bytes: int, http2: bool) -> None:
        self.handshake_timeout = handshake_timeout
        self.max_header_bytes = max_header_bytes
        self.http2 = http2


class _Counters:
    """What the guard saw, for the log and for tests."""

    def __init__(self) -> None:
        self.failed = Throttled("connection failed inside the HTTP server, closed it")
        self.accept = Throttled("accept is out of resources, retrying")


class _WSStream(WSStream):
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


class _H11Protocol(H11Protocol):
    http2: bool = False

    async def _check_protocol(self, event: Any) -> None:
        # Without HTTP/2 an `Upgrade: h2c` header is ignored (the request is answered in
        # HTTP/1.1, as RFC 9110 allows) and the h2 preface is just a bad request.
        if self.http2:
            await super()._check_protocol(event)

    async def _create_stream(self, request: Any) -> None:
        await super()._create_stream(request)
        if type(self.stream) is WSStream:
            self.stream.__class__ = _WSStream
            assert isinstance(self.stream, _WSStream)
            self.stream._adopt()


class _TCPServer(TCPServer):
    """Hypercorn's per-connection server with hubd's time and size limits."""

    def __init__(
        self,
        app: Any,
        config: Config,
        context: WorkerContext,
        state: Any,
        stream: Any,
        options: ServeOptions,
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.options = options
        self._idle = True  # no request in flight: the next bytes are a request head
        self._requests = 0
        self._head_bytes = 0  # bytes received since the current request head began

    async def run(self) -> None:
        # Hypercorn's TCPServer.run, with hubd's protocol classes and handshake limit.
        try:
            try:
                with trio.fail_after(self.options.handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return
            alpn_protocol = self.stream.selected_alpn_protocol()
            sock = self.stream.transport_stream.socket
            ssl = True
        except AttributeError:  # not TLS
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
                self.protocol = ProtocolWrapper(*args, alpn_protocol)
                if isinstance(self.protocol.protocol, H11Protocol):
                    h11 = _H11Protocol(*args)
                    h11.http2 = self.options.http2
                    self.protocol.protocol = h11
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Any) -> None:
        if isinstance(event, Updated):
            self._idle = event.idle
            self._head_bytes = 0
            if not event.idle:
                self._requests += 1
        await super().protocol_send(event)

    async def _read_data(self) -> None:
        limit = self.options.max_header_bytes
        while True:
            size = MAX_RECV
            if self._idle:
                # A request head is being read: h11 checks its size only while it is
                # incomplete and only between reads, so read no further than the limit
                # and refuse a head that has not ended by then (431).
                if self._head_bytes >= limit:
                    await self._refuse_head()
                    break
                size = min(MAX_RECV, limit - self._head_bytes)
            try:
                with trio.fail_after(self.config.read_timeout or inf):
                    data = await self.stream.receive_some(size)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            if self._idle and data:
                if self._head_bytes == 0 and self._requests > 0:
                    # The next keep-alive request has begun: its head gets the handshake
                    # limit, not what is left of the keep-alive timer.
                    await self.idle_task.restart(self._task_group, self._head_timeout)
                self._head_bytes += len(data)
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())
        if self._idle:
            # The peer is gone (or its half of the connection is) with no request in
            # flight: nothing can follow, so the connection ends now rather than when
            # the keep-alive timer fires.
            await self.idle_task.stop()

    async def _refuse_head(self) -> None:
        protocol = self.protocol.protocol
        if isinstance(protocol, H11Protocol):
            # As h11 itself answers an over-long head it does catch.
            await protocol._send_error_response(431)
        await self._close()

    async def _close(self) -> None:
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

    async def _idle_timeout(self) -> None:
        # The first request's head must arrive within the handshake limit; between
        # requests the connection may wait for the keep-alive timeout.
        timeout = (
            self.options.handshake_timeout
            if self._requests == 0
            else self.config.keep_alive_timeout
        )
        await self._close_after(timeout)

    async def _head_timeout(self) -> None:
        await self._close_after(self.options.handshake_timeout)

    async def _close_after(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self.context.terminated.wait()
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()


def peer_of(stream: Any) -> str:
    """The peer address of an accepted stream, for the log ("unknown" once it is gone)."""
    sock: Any = getattr(stream, "socket", None) or getattr(
        getattr(stream, "transport_stream", None), "socket", None
    )
    try:
        host, port = sock.getpeername()[:2]
    except (AttributeError, OSError, ValueError):
        return "unknown"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _guarded(make: Callable[[Any], _TCPServer], counters: _Counters, stream: Any) -> None:
    """Serve one connection; whatever goes wrong inside it ends it alone."""
    peer = peer_of(stream)
    try:
        await make(stream).run()
    except* Exception as group:
        errors = group.exceptions
        first = errors[0]
        counters.failed.note(f"peer={peer} error={type(first).__name__}: {str(first)[:200]}")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _accept_loop(
    listener: trio.abc.Listener[Any],
    nursery: trio.Nursery,
    handler: Callable[[Any], Awaitable[None]],
    counters: _Counters,
) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                counters.accept.note(
                    f"{errno.errorcode[exc.errno]} ({os.strerror(exc.errno)}); new connections "
                    f"wait in the backlog, retrying every {ACCEPT_BACKOFF} s"
                )
                await trio.sleep(ACCEPT_BACKOFF)
            else:
                nursery.start_soon(handler, stream)


async def serve(
    app: Any,
    config: Config,
    options: ServeOptions,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on the sockets `config.bind` / `config.insecure_bind` name until
    `shutdown_trigger` returns, then stop accepting, close idle keep-alive connections
    and give the rest `config.graceful_timeout` seconds.

    Reports the bound addresses (`http://host:port`, `https://...`) through
    `task_status` once every listener accepts."""
    if options.http2:
        config.alpn_protocols = ["h2", "http/1.1"]
    else:
        config.alpn_protocols = ["http/1.1"]
    config.ssl_handshake_timeout = options.handshake_timeout
    config.h11_max_incomplete_size = options.max_header_bytes
    errorlog = config.errorlog
    if isinstance(errorlog, logging.Logger) and not any(
        isinstance(f, ThrottleFilter) for f in errorlog.filters
    ):
        errorlog.addFilter(ThrottleFilter())
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    counters = _Counters()
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            sockets = config.create_sockets()
            ssl_context = config.create_ssl_context()
            listeners: list[trio.SocketListener | trio.SSLListener[trio.SocketStream]] = []
            binds: list[str] = []
            for sock, secure in [(s, True) for s in sockets.secure_sockets] + [
                (s, False) for s in sockets.insecure_sockets
            ]:
                sock.listen(config.backlog)
                plain = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                bind = repr_socket_addr(sock.family, sock.getsockname())
                if secure:
                    assert ssl_context is not None
                    listeners.append(trio.SSLListener(plain, ssl_context, https_compatible=True))
                    binds.append(f"https://{bind}")
                else:
                    listeners.append(plain)
                    binds.append(f"http://{bind}")
            make = partial(
                _TCPServer,
                wrapped,
                config,
                context,
                ConnectionState(lifespan_state.copy()),
                options=options,
            )
            handler = partial(_guarded, make, counters)
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(_accept_loop, listener, connections, handler, counters)
                task_status.started(binds)
                await shutdown_trigger()
                acceptors.cancel_scope.cancel()
            # Idle keep-alive connections close at once; the rest get the grace period.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


__all__ = ["CAPACITY_ERRNOS", "ServeOptions", "ThrottleFilter", "Throttled", "peer_of", "serve"]
