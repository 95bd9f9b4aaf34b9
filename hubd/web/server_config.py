"""What the web server is configured with, from validated settings: Hypercorn's `Config`
(its public API) and the limits hubd's seam adds to it (`ServeOptions`)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

from hypercorn.config import Config as HypercornConfig

from hubd.settings import Settings
from hubd.web.publish_route import PUBLISH_PATHS
from hubd.web.seam.connection import ServeOptions

# The listen(2) backlog of every socket hubd serves: set when hubd binds it, and again by
# the server on the duplicate it serves. 4096 (the kernel caps it at net.core.somaxconn,
# 4096 by default since Linux 5.4): in a reconnect storm of 19,900 clients at once, 1024
# overflowed the accept queue while hubd's core was busy with handshakes and 299 clients
# got ECONNRESET; with 4096, none, and the storm ended 27 % sooner (docs/performance.md).
BACKLOG = 4096


def hypercorn_config(
    settings: Settings, main: Sequence[socket.socket], metrics: socket.socket | None
) -> HypercornConfig:
    """Hypercorn silently accepts misspelled attributes, so it is configured here only,
    attribute by attribute, from validated settings.

    It serves the already-bound sockets (`main`, and `metrics` when given), each handed
    over as a duplicate descriptor that Hypercorn owns and closes. With TLS the main
    sockets serve https/wss and the metrics socket stays plain HTTP."""
    config = HypercornConfig()
    binds = [f"fd://{os.dup(sock.fileno())}" for sock in main]
    extra = [f"fd://{os.dup(metrics.fileno())}"] if metrics else []
    if settings.server.tls:
        config.certfile = settings.server.tls_cert
        config.keyfile = settings.server.tls_key
        config.bind = binds
        config.insecure_bind = extra
    else:
        config.bind = binds + extra
    config.backlog = BACKLOG
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # Our own drain closes WebSockets with 1001 first; this only bounds the rest.
    config.graceful_timeout = server_grace(settings.server.shutdown_timeout)
    # Text frames are measured in characters here; hubd checks UTF-8 bytes itself and
    # closes with 1009 (any frame over 4x the byte limit in characters is over it in bytes).
    config.websocket_max_message_size = settings.hub.max_message_bytes * 4
    config.h11_max_incomplete_size = settings.server.max_header_bytes
    config.keep_alive_timeout = 75.0
    config.include_server_header = False
    return config


def serve_options(settings: Settings) -> ServeOptions:
    """The limits hubd's server adds to Hypercorn's (see `hubd.web.seam`)."""
    server = settings.server
    return ServeOptions(
        server.handshake_timeout,
        server.max_header_bytes,
        server.http2,
        # permessage-deflate is Hypercorn's stream's alone (hub.compression needs a restart).
        native_websockets=not settings.hub.compression,
        # Publishing is served on the connection's task (no app task per request).
        native_paths=PUBLISH_PATHS,
    )


def server_grace(shutdown_timeout: float) -> float:
    """The part of the shutdown budget kept for Hypercorn to close its own sockets."""
    return min(1.0, shutdown_timeout / 4)


__all__ = ["BACKLOG", "hypercorn_config", "serve_options", "server_grace"]
