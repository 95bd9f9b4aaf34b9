"""`serve`: what Hypercorn's trio worker does (lifespan, listeners, graceful shutdown),
with hubd's accept loop, connection guard and per-connection server in place of
Hypercorn's own."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from hubd.web.seam.accept import Counters, accept_loop, guarded
from hubd.web.seam.connection import HubdTCPServer, IdleConnections, ServeOptions
from hubd.web.seam.throttle import ThrottleFilter

Listener = trio.SocketListener | trio.SSLListener[trio.SocketStream]


def _apply_options(config: Config, options: ServeOptions) -> None:
    """Set what `options` decides in Hypercorn's `config`, and throttle its error log."""
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


def _open_listeners(config: Config) -> tuple[list[Listener], list[str]]:
    """A listener for every socket `config` names (TLS ones wrapped), and their addresses
    as `https://host:port` / `http://host:port`, in the same order."""
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[Listener] = []
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
    return listeners, binds


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
    _apply_options(config, options)
    wrapped = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    counters = Counters()
    idle = IdleConnections()
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners, binds = _open_listeners(config)
            make = partial(
                HubdTCPServer,
                wrapped,
                config,
                context,
                ConnectionState(lifespan_state.copy()),
                options=options,
                idle=idle,
            )
            handler = partial(guarded, make, counters)
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(accept_loop, listener, connections, handler, counters)
                task_status.started(binds)
                await shutdown_trigger()
                acceptors.cancel_scope.cancel()
            # Idle keep-alive connections close at once; the rest get the grace period.
            await context.terminated.set()
            idle.close_all()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


__all__ = ["serve"]
