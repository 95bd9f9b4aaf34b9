"""Opening one WebSocket to hubd: TCP (from a chosen source address if asked), TLS for
`https`/`wss`, the upgrade, and the server's refusal turned into a `HubdError`."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import trio
import trio_websocket
from trio_websocket import ConnectionRejected, HandshakeError, WebSocketConnection

from hubd.client.endpoint import Endpoint
from hubd.client.errors import NetworkError, error_from_response

# trio-websocket's default (1 MiB) is below what hubd may send: events up to
# hub.max_publish_bytes (1 MiB by default) plus the envelope, or a batch-mode frame.
DEFAULT_MAX_MESSAGE = 64 * 2**20


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
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(connect_timeout):
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    endpoint.authority,
                    resource,
                    extra_headers=extra,
                    max_message_size=max_message_size,
                )
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
