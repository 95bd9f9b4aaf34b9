"""The composition root: builds the hub, the authenticator and the web app, serves them
with Hypercorn's trio worker, and drains on SIGTERM/SIGINT. The only module that wires
everything together."""

from __future__ import annotations

import logging
import signal
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from hubd import __version__
from hubd.core.auth import Authenticator
from hubd.core.hub import Hub
from hubd.core.session import CLOSE_GOING_AWAY
from hubd.settings import Settings, parse_listen
from hubd.web.app import HubdApp
from hubd.web.context import WebContext

log = logging.getLogger("hubd")


def hypercorn_config(settings: Settings) -> HypercornConfig:
    """Hypercorn silently accepts misspelled attributes, so it is configured here only,
    attribute by attribute, from validated settings."""
    config = HypercornConfig()
    config.bind = [
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        for host, port in (parse_listen(item) for item in settings.server.listen)
    ]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Our own drain closes WebSockets with 1001 first; this only bounds the rest.
    config.graceful_timeout = 1.0
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
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain: refuse new connections (503), close every
    WebSocket with 1001 after flushing what was queued for it, and return within
    `server.shutdown_timeout`."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        hub = Hub(settings.hub, settings.limits)
        ctx = WebContext(
            settings=settings,
            hub=hub,
            auth=Authenticator(settings.auth),
            trusted_proxies=settings.limits.trusted_networks,
        )
        app = HubdApp(ctx)
        stop_server = trio.Event()
        log.info(
            "starting hubd %s config=%s listen=%s",
            __version__,
            config_path,
            ",".join(settings.server.listen),
        )
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(
                    hypercorn_serve,
                    app,
                    hypercorn_config(settings),
                    shutdown_trigger=stop_server.wait,
                )
            )
            log.info("ready listening on %s", " ".join(binds))
            task_status.started(binds)
            async for signum in signals:
                log.info("draining after %s", signal.Signals(signum).name)
                break
            await drain(hub, settings.server.shutdown_timeout)
            stop_server.set()
        log.info("stopped")


async def drain(hub: Hub, deadline_seconds: float) -> None:
    """Refuse new work and close every connection with 1001 within `deadline_seconds`."""
    hub.draining = True
    hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
    with trio.move_on_after(deadline_seconds) as scope:
        await hub.wait_empty()
    if scope.cancelled_caught:
        log.warning(
            "drain timed out after %.1fs with %d connection(s) still open",
            deadline_seconds,
            len(hub.sessions),
        )
