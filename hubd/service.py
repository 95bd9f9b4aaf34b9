"""The composition root: builds the hub, the authenticator and the web app, serves them
with Hypercorn's trio worker, and drains on SIGTERM/SIGINT. The only module that wires
everything together."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from hubd import __version__
from hubd.core.auth import Authenticator
from hubd.core.hub import CLOSE_GOING_AWAY, Hub
from hubd.settings import Settings, parse_listen
from hubd.web.app import HubdApp
from hubd.web.context import WebContext

log = logging.getLogger("hubd")


BACKLOG = 1024


class ListenError(Exception):
    """A listen address cannot be bound; the message names it."""


def open_listeners(settings: Settings) -> list[socket.socket]:
    """Bind and listen on every `server.listen` address, before anything else starts, so
    a taken or foreign address fails at once with the address in the message."""
    sockets: list[socket.socket] = []
    # Accepted sockets inherit this: the kernel aborts a connection whose sent data stays
    # unacknowledged this long, which frees a writer parked on a peer that stopped reading.
    user_timeout_ms = int(max(10.0, settings.hub.idle_timeout) * 1000)
    try:
        for item in settings.server.listen:
            sockets.append(_listen(item, user_timeout_ms))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listen(item: str, user_timeout_ms: int) -> socket.socket:
    host, port = parse_listen(item)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {item}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {item}: {exc.strerror or exc}") from None
    return sock


def hypercorn_config(settings: Settings, sockets: list[socket.socket]) -> HypercornConfig:
    """Hypercorn silently accepts misspelled attributes, so it is configured here only,
    attribute by attribute, from validated settings.

    It serves the already-bound `sockets`, each handed over as a duplicate descriptor
    that Hypercorn owns and closes."""
    config = HypercornConfig()
    config.bind = [f"fd://{os.dup(sock.fileno())}" for sock in sockets]
    config.backlog = BACKLOG
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Our own drain closes WebSockets with 1001 first; this only bounds the rest.
    config.graceful_timeout = _server_grace(settings.server.shutdown_timeout)
    # Text frames are measured in characters here; hubd checks UTF-8 bytes itself and
    # closes with 1009 (any frame over 4x the byte limit in characters is over it in bytes).
    config.websocket_max_message_size = settings.hub.max_message_bytes * 4
    config.h11_max_incomplete_size = 64 * 1024
    config.keep_alive_timeout = 75.0
    config.include_server_header = False
    return config


async def run(
    settings: Settings,
    config_path: str,
    sockets: list[socket.socket],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `sockets` (from `open_listeners`) until SIGTERM/SIGINT, then drain.

    Draining refuses new connections and publishes (503), closes every WebSocket with 1001
    after flushing what was queued for it, and returns within `server.shutdown_timeout`;
    a connection whose peer will not take its last frames is cut when that time is up."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        hub = Hub(settings.hub, settings.limits)
        ctx = WebContext(
            settings=settings,
            hub=hub,
            auth=Authenticator(settings.auth),
            trusted_proxies=settings.limits.trusted_networks,
        )
        app = HubdApp(ctx)
        shutdown = trio.Event()
        stop_server = trio.Event()
        timeout = settings.server.shutdown_timeout
        log.info(
            "starting hubd %s config=%s listen=%s",
            __version__,
            config_path,
            ",".join(settings.server.listen),
        )
        async with trio.open_nursery() as outer:
            outer.start_soon(_watch_signals, signals, shutdown)
            async with trio.open_nursery() as server:
                binds: list[str] = await server.start(
                    partial(
                        hypercorn_serve,
                        app,
                        hypercorn_config(settings, sockets),
                        shutdown_trigger=stop_server.wait,
                    )
                )
                for sock in sockets:
                    sock.close()  # Hypercorn serves its own duplicates
                log.info("ready listening on %s", " ".join(binds))
                task_status.started(binds)
                await shutdown.wait()
                deadline = trio.current_time() + timeout
                trio.lowlevel.spawn_system_task(_exit_at, deadline, hub)
                await drain(hub, deadline - _server_grace(timeout))
                stop_server.set()
            outer.cancel_scope.cancel()
        log.info("stopped")


def _server_grace(shutdown_timeout: float) -> float:
    """The part of the shutdown budget kept for Hypercorn to close its own sockets."""
    return min(1.0, shutdown_timeout / 4)


async def _watch_signals(signals: AsyncIterator[int], shutdown: trio.Event) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.warning(
                "SIGHUP ignored: configuration reload is not available in this version; "
                "restart hubd to apply a new configuration"
            )
        elif shutdown.is_set():
            log.info("%s ignored: already draining", name)
        else:
            log.info("draining after %s", name)
            shutdown.set()


async def _exit_at(deadline: float, hub: Hub) -> None:
    """Last resort: a peer that never reads can hold a send open (Hypercorn shields it),
    so when the shutdown budget is spent the process exits anyway."""
    await trio.sleep_until(deadline)
    log.warning(
        "stopped: shutdown_timeout reached with %d connection(s) not closed cleanly",
        len(hub.sessions),
    )
    logging.shutdown()
    os._exit(0)


async def drain(hub: Hub, until: float) -> None:
    """Refuse new work and ask every connection to close with 1001; wait until they have
    or until the trio time `until`."""
    hub.draining = True
    hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
    with trio.move_on_at(until) as scope:
        await hub.wait_empty()
    if scope.cancelled_caught:
        log.warning("drain: %d connection(s) still open at the deadline", len(hub.sessions))
