"""Opening one WebSocket to hubd: TCP (from a chosen source address if asked), TLS for
`https`/`wss`, the upgrade, and the server's refusal turned into a `HubdError`."""

from __future__ import annotations

import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import cast

import trio
import trio_websocket
from trio_websocket import ConnectionRejected, HandshakeError, WebSocketConnection

from hubd.client.endpoint import Endpoint
from hubd.client.errors import NetworkError, error_from_response

# trio-websocket's default (1 MiB) is below what hubd may send: events up to
# hub.max_publish_bytes (1 MiB by default) plus the envelope, or a batch-mode frame.
DEFAULT_MAX_MESSAGE = 64 * 2**20
# How trio-websocket words the close it starts itself (code 1009) when a frame from the
# server is over `max_message_size`; hubd words its own 1009 differently.
_OWN_TOO_BIG = "Exceeded maximum message size"


class _Tracked(trio.abc.Stream):
    """A stream that notes when it last received bytes: a frame that arrives slowly
    (a large one on a slow link) shows as progress before it is complete."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received_at = trio.current_time()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received_at = trio.current_time()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


_TRACKED: weakref.WeakKeyDictionary[WebSocketConnection, _Tracked] = weakref.WeakKeyDictionary()


def last_received(ws: WebSocketConnection) -> float | None:
    """When bytes last came in on `ws` (trio time), partial frames included; None for a
    connection not opened by `open_websocket`."""
    tracked = _TRACKED.get(ws)
    return None if tracked is None else tracked.received_at


def refused_as_too_big(ws: WebSocketConnection) -> bool:
    """Whether `ws` was closed by this side with 1009 because a frame from the server
    was over its `max_message_size` (as opposed to a 1009 the server sent)."""
    reason = ws.closed
    return (
        reason is not None
        and reason.code == 1009
        and (reason.reason or "").startswith(_OWN_TOO_BIG)
    )


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception that matters in a nursery's group (trio wraps everything): the
    only leaf that is not `trio.Cancelled`; the group itself when there are several, or
    when every leaf is a Cancelled (the enclosing cancel scope deals with those)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else group


async def _open_stream(
    endpoint: Endpoint, source_address: str | None, ssl_context: ssl.SSLContext | None
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream(endpoint.host, endpoint.port, local_address=source_address)
    if not endpoint.tls:
        return tcp
    context = ssl_context or ssl.create_default_context()
    stream = trio.SSLStream(tcp, context, server_hostname=endpoint.host, https_compatible=True)
    try:
        await stream.do_handshake()
    except BaseException:
        await tcp.aclose()
        raise
    return stream


@asynccontextmanager
async def open_websocket(
    endpoint: Endpoint,
    resource: str,
    headers: Mapping[str, str],
    *,
    source_address: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE,
    connect_timeout: float = 10.0,
) -> AsyncIterator[WebSocketConnection]:
    """An open WebSocket for the body of the `async with`.

    Raises `HubdError` (or its 401/403/409 subclasses) when hubd refuses the upgrade, and
    `NetworkError` when it cannot be reached within `connect_timeout` seconds or the handshake
    breaks. Leaving the block closes the TCP connection without a close handshake: call
    `ws.aclose(code)` first for a clean close."""
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    try:
        with trio.fail_after(connect_timeout):
            stream = await _open_stream(endpoint, source_address, ssl_context)
    except (OSError, trio.BrokenResourceError) as exc:
        raise NetworkError(f"cannot connect to {endpoint}: {describe_failure(exc)}") from None
    except trio.TooSlowError:
        raise NetworkError(
            f"cannot connect to {endpoint}: no answer within {connect_timeout:g} s"
        ) from None
    opened = False
    tracked = _Tracked(stream)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    # Typed for socket streams, but only the Stream methods are used (its
                    # `local`/`remote` show another stream's repr).
                    cast(trio.SocketStream, tracked),
                    endpoint.authority,
                    resource,
                    extra_headers=extra,
                    max_message_size=max_message_size,
                )
            _TRACKED[ws] = tracked
            opened = True
            try:
                yield ws
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if inner is group:
            raise  # several at once: as they are
        translated = _translate(inner, endpoint, connect_timeout, opened)
        if translated is inner:
            raise inner from inner.__cause__  # the caller's own exception
        raise translated from None
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _translate(
    exc: BaseException, endpoint: Endpoint, timeout: float, opened: bool
) -> BaseException:
    """The client error for a failure of the connection itself; anything else (the
    caller's own exceptions, a timeout of its own after the upgrade) unchanged."""
    if isinstance(exc, ConnectionRejected):
        return error_from_response(exc.status_code, exc.body)
    if isinstance(exc, trio.TooSlowError) and not opened:
        return NetworkError(f"{endpoint} did not complete the WebSocket handshake in {timeout:g} s")
    if isinstance(exc, HandshakeError | trio.BrokenResourceError | OSError):
        return NetworkError(f"WebSocket handshake with {endpoint} failed: {describe_failure(exc)}")
    return exc


def describe_failure(exc: BaseException) -> str:
    """Why a connection failed, in the system's words ("Connection refused") when the
    error or what caused it carries them (trio's "all attempts to connect ... failed"
    holds the attempts' errors as its cause)."""
    seen: list[BaseException] = [exc]
    while seen:
        current = seen.pop(0)
        if isinstance(current, OSError) and current.strerror:
            # trio words it "Error connecting to ('h', p): Connection refused".
            return current.strerror.rpartition("): ")[2] or current.strerror
        if isinstance(current, BaseExceptionGroup):
            seen += current.exceptions
        for linked in (current.__cause__, current.__context__):
            if linked is not None and len(seen) < 50:
                seen.append(linked)
    return str(exc) or type(exc).__name__
