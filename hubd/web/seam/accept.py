"""Accepting connections: the accept loop, which backs off while the process is out of
resources, and the guard that makes a failure inside one connection end that connection
only (pgjones/hypercorn#225 raised h11's `LocalProtocolError` into the server's nursery,
which ended every listener)."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from hubd.web.seam.connection import HubdTCPServer
from hubd.web.seam.throttle import Throttled

# accept(2) errors that mean "out of resources now", not "this listener is broken".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# Accept retries this often while out of file descriptors (as trio's serve_listeners).
ACCEPT_BACKOFF = 0.1


class Counters:
    """What the guard and the accept loops saw, for the log and for tests."""

    def __init__(self) -> None:
        self.failed = Throttled("connection failed inside the HTTP server, closed it")
        self.accept = Throttled("accept is out of resources, retrying")


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


async def guarded(make: Callable[[Any], HubdTCPServer], counters: Counters, stream: Any) -> None:
    """Serve one connection; whatever goes wrong inside it ends it alone."""
    try:
        await make(stream).run()
    except* Exception as group:
        errors = group.exceptions
        first = errors[0]
        # Asked only now (a syscall and a string per connection otherwise): a peer already
        # gone reads "unknown".
        peer = peer_of(stream)
        counters.failed.note(f"peer={peer} error={type(first).__name__}: {str(first)[:200]}")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def accept_loop(
    listener: trio.abc.Listener[Any],
    nursery: trio.Nursery,
    handler: Callable[[Any], Awaitable[None]],
    counters: Counters,
) -> None:
    """Accept on `listener` until cancelled, starting `handler(stream)` in `nursery` for
    each connection; out of resources, retry every `ACCEPT_BACKOFF` seconds."""
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


__all__ = ["ACCEPT_BACKOFF", "CAPACITY_ERRNOS", "Counters", "accept_loop", "guarded", "peer_of"]
