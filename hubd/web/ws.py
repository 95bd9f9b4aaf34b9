"""The subscribe endpoint as a lean ASGI WebSocket handler.

It is served below the Quart-Trio app rather than through it: every rejection must be a
plain HTTP response with a JSON body before the upgrade (the ASGI
`websocket.http.response` extension), and the per-frame send path must stay short because
it runs once per delivery.
"""

from __future__ import annotations

import logging
from typing import Any

from hubd.core.clientip import resolve_client_ip
from hubd.core.errors import HubError
from hubd.core.hub import Session
from hubd.core.session import serve_session
from hubd.core.transport import Transport
from hubd.web.asgi_transport import AsgiTransport
from hubd.web.context import WebContext
from hubd.web.errors import JSON_HEADERS, error_body
from hubd.web.fastpath import HypercornTransport, hypercorn_stream, refuse_compression
from hubd.web.scope import headers as scope_headers
from hubd.web.scope import query as scope_query

log = logging.getLogger("hubd.connections")

SUBSCRIBE_PATHS = frozenset({"/v1/ws/subscribe", "/api/v1/ws/subscribe"})

Scope = dict[str, Any]
Message = dict[str, Any]


def _admit(ctx: WebContext, scope: Scope) -> tuple[str, Session | HubError]:
    """Resolve the client IP, authenticate and admit, from the handshake request.

    A plain function so that the parsed headers and query die with it instead of living
    as long as the connection (they were a measurable part of each idle connection)."""
    headers = scope_headers(scope)
    query = scope_query(scope)
    client = scope.get("client")
    ip = resolve_client_ip(
        client[0] if client else None,
        headers.get("x-forwarded-for"),
        headers.get("x-real-ip"),
        ctx.trusted_proxies,
    )
    try:
        principal = ctx.authenticate(headers, query.get("access_token"))
        batch = _flag(query, "batch")
        return ip, ctx.hub.admit(principal, ip, query.get("event_types"), batch=batch)
    except HubError as exc:
        return ip, exc


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise HubError(400, "bad_request", f"{name}={value!r} is not allowed; use {name}=1 or {name}=0")


async def reject(send: Any, status: int, code: str, message: str) -> None:
    body = error_body(code, message)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


async def handle_websocket(ctx: WebContext, scope: Scope, receive: Any, send: Any) -> None:
    """Serve one WebSocket request from handshake to close."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] not in SUBSCRIBE_PATHS:
        await reject(
            send,
            404,
            "not_found",
            f"no WebSocket endpoint at {scope['path']!r}; subscribe at /v1/ws/subscribe",
        )
        return
    ip, outcome = _admit(ctx, scope)
    if isinstance(outcome, HubError):
        log.info("rejected ip=%s status=%d error=%s", ip, outcome.status, outcome.code)
        await reject(send, outcome.status, outcome.code, outcome.message)
        return
    session = outcome
    try:
        log.info(
            "connected client_id=%s ip=%s principal=%s channels=%s",
            session.client_id,
            ip,
            session.principal.name,
            ",".join(session.subscriptions),
        )
        stream = hypercorn_stream(send)
        transport: Transport
        if stream is not None and not ctx.settings.hub.compression:
            refuse_compression(stream)
            fast = HypercornTransport(receive, send, stream)
            fast.attach(session)
            transport = fast
        else:
            transport = AsgiTransport(receive, send)
        await send({"type": "websocket.accept"})
        await serve_session(ctx.hub, session, transport)
    finally:
        ctx.hub.unregister(session)
