"""`POST /v1/events` as a lean ASGI handler.

Publishing is the hottest HTTP route: with single-event publishes its per-request cost is
part of every event's latency. Quart's request machinery (request context, signals, a
per-request nursery) cost about as much as everything else in a publish, so this one route
is served below the Quart-Trio app, like the subscribe socket; every other route stays in
Quart. Same rules, same JSON answers, same order of checks: credentials (401), body size
(413, with `Connection: close` since the body is left unread), the body arriving within
`server.body_timeout` (408, with `Connection: close` too), then `publish_through`.

Each answered request is timed from its arrival here to its answer being sent, for
`hubd_publish_duration_seconds` (a client that went away before its body was in got no
answer and is not counted).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from hubd.backplane import publish_through
from hubd.core.errors import HubError
from hubd.web.context import WebContext
from hubd.web.errors import payload_too_large, request_timeout
from hubd.web.responses import INTERNAL_ERROR, send_error, send_json
from hubd.web.scope import headers as scope_headers
from hubd.web.scope import query as scope_query

log = logging.getLogger("hubd.http")

PUBLISH_PATHS = frozenset({"/v1/events", "/api/v1/events"})


def is_publish(scope: Any) -> bool:
    return scope["method"] == "POST" and scope["path"] in PUBLISH_PATHS


async def _read_body(receive: Any, limit: int, seconds: float) -> bytes | None:
    """The whole request body, or None if the client went away. 413 past `limit`; 408
    unless all of it is in within `seconds` (`server.body_timeout`)."""
    with trio.move_on_after(seconds):
        return await _read_chunks(receive, limit)
    raise request_timeout(seconds)


async def _read_chunks(receive: Any, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise payload_too_large(limit, f"more than {limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def handle_publish(ctx: WebContext, scope: Any, receive: Any, send: Any) -> None:
    """Serve one `POST /v1/events` request and time it."""
    arrived = trio.current_time()
    status = await _publish(ctx, scope, receive, send)
    if status is not None:
        ctx.http_counts.publish_answered(status, trio.current_time() - arrived)


async def _publish(ctx: WebContext, scope: Any, receive: Any, send: Any) -> int | None:
    """Serve the request; the status answered, or None when the client went away first."""
    limit = ctx.settings.hub.max_publish_bytes
    payload: bytes | None = None
    try:
        headers = scope_headers(scope)
        principal = ctx.authenticate(headers, scope_query(scope).get("access_token"))
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > limit:
            raise payload_too_large(limit, length.strip())
        payload = await _read_body(receive, limit, ctx.settings.server.body_timeout)
        if payload is None:
            return None  # the client is gone: nothing was published
        result = await publish_through(ctx.backplane, principal, payload)
        await send_json(send, 202, result.response())
        return 202
    except HubError as exc:
        # An answer given before the body was read (401, 403, 408, 413) leaves it unread:
        # the server then closes the connection, so say so, or a keep-alive client would
        # send its next request on a connection that is going away.
        await send_error(send, exc.status, exc.code, exc.message, close=payload is None)
        return exc.status
    except Exception:
        log.exception("unexpected error on POST %s", scope["path"])
        await send_error(send, *INTERNAL_ERROR)
        return INTERNAL_ERROR[0]
