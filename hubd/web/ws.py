"""The subscribe endpoint as a lean ASGI WebSocket handler.

It is served below the Quart-Trio app rather than through it: every rejection must be a
plain HTTP response with a JSON body before the upgrade (the ASGI
`websocket.http.response` extension), and the per-frame send path must stay short because
it runs once per delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hubd.backplane import join
from hubd.core.auth import Principal
from hubd.core.clientip import resolve_client_ip
from hubd.core.errors import HubError
from hubd.core.serving import serve_session
from hubd.core.session import Session
from hubd.core.transport import Transport
from hubd.logs import RateLimitedLog, event
from hubd.protocol import subprotocols
from hubd.protocol.quoting import quoted
from hubd.web.asgi_transport import AsgiTransport
from hubd.web.context import WebContext
from hubd.web.responses import send_error
from hubd.web.scope import headers as scope_headers
from hubd.web.scope import query as scope_query
from hubd.web.seam.direct_write import HypercornTransport, hypercorn_stream, refuse_compression
from hubd.web.seam.native import native_websocket

log = logging.getLogger("hubd.connections")

# Refused handshakes cost a client nothing, so their log lines are rate limited (the
# counters in /metrics still count every one): at most 20 per 10 s, then one line with
# the number left out.
REFUSALS_LOGGED = 20
REFUSALS_INTERVAL = 10.0
_refusal_log = RateLimitedLog(
    log, "rejected handshakes", limit=REFUSALS_LOGGED, interval=REFUSALS_INTERVAL
)

SUBSCRIBE_PATHS = frozenset({"/v1/ws/subscribe", "/api/v1/ws/subscribe"})

Scope = dict[str, Any]
Message = dict[str, Any]


def check_origin(origin: str | None, host: str | None, allowed: list[str]) -> None:
    """Refuse (403) a browser page from an origin not allowed to connect.

    No Origin header: not a browser, allowed (credentials still apply). `allowed` empty:
    only same-origin pages (the Origin's host:port is the Host header). Otherwise only the
    listed origins, or any with "*". This stops another site's page from using a
    browser's credentials (cookies, a token in the URL) to open a socket."""
    if origin is None or "*" in allowed:
        return
    normalized = origin.strip().rstrip("/").lower()
    if allowed:
        if normalized in (a.lower() for a in allowed):
            return
        permitted = "the origins in server.allowed_origins: " + ", ".join(allowed)
    else:
        if host is not None and normalized.partition("://")[2] == host.strip().lower():
            return
        permitted = "same-origin pages only (server.allowed_origins is empty)"
    raise HubError(
        403,
        "forbidden_origin",
        f"Origin {quoted(origin)} is not allowed; allowed are {permitted}",
    )


@dataclass(frozen=True, slots=True)
class _Request:
    principal: Principal
    event_types: str | None
    batch: bool
    since: str | None
    # The subprotocol the accept selects (`hubd.v1` when the client offered it).
    subprotocol: str | None


def _read_request(ctx: WebContext, scope: Scope) -> tuple[str, _Request | HubError]:
    """Check the Origin, resolve the client IP and authenticate, from the handshake.

    A plain function so that the parsed headers and query die with it instead of living
    as long as the connection (they were a measurable part of each idle connection)."""
    headers = scope_headers(scope)
    query = scope_query(scope)
    client = scope.get("client")
    limits = ctx.settings.limits  # read per handshake: a reload swaps it
    ip = resolve_client_ip(
        client[0] if client else None,
        headers,
        ctx.trusted_proxies,
        header=limits.client_ip_header,
        ipv6_prefix=limits.ipv6_prefix,
    )
    try:
        check_origin(
            headers.get("origin"), headers.get("host"), ctx.settings.server.allowed_origins
        )
        offer = read_offer(scope.get("subprotocols") or ())
        principal = ctx.authenticate(headers, query.get("access_token"), offer)
        return ip, _Request(
            principal=principal,
            event_types=query.get("event_types"),
            batch=_flag(query, "batch"),
            # Resume point: ?since= (any client) or Last-Event-ID (the SSE convention).
            since=query.get("since") or headers.get("last-event-id") or None,
            subprotocol=offer.selected,
        )
    except HubError as exc:
        return ip, exc


def read_offer(offered: Iterable[str]) -> subprotocols.Offer:
    """The handshake's subprotocols read (`hubd.v1`, a `bearer.`/`apikey.` credential):
    401 for a credential that cannot be decoded, 400 for an offer of the wrong shape."""
    try:
        return subprotocols.parse(list(offered))
    except subprotocols.SubprotocolError as exc:
        if exc.credential:
            raise HubError(401, "unauthorized", exc.message) from None
        raise HubError(400, "bad_request", exc.message) from None


def dry_run(ctx: WebContext, scope: Scope) -> HubError:
    """What a WebSocket handshake with this request's headers and query would be answered:
    the refusal, or 426 `upgrade_required` when every check passes (on this node: with the
    Redis backplane another node may still hold this IP's connection).

    A browser's WebSocket API never shows why a handshake was refused, so a page (the
    console) asks this over plain HTTP to tell its user."""
    ip, request = _read_request(ctx, scope)
    if isinstance(request, HubError):
        return request
    try:
        ctx.hub.check_admission(request.principal, ip, request.event_types, request.since)
    except HubError as exc:
        return exc
    return HubError(
        426,
        "upgrade_required",
        "this endpoint speaks WebSocket; a handshake with these credentials and channels "
        "would be accepted: connect with a WebSocket client "
        "(ws://host/v1/ws/subscribe?event_types=...)",
    )


def _rejected(ctx: WebContext, ip: str, error: HubError) -> None:
    ctx.hub.rejected.add(error.status, error.code)
    _refusal_log.event(
        logging.INFO,
        "rejected",
        ip=ip,
        status=error.status,
        error=error.code,
        message=error.message,
    )


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value.lower() in ("", "0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise HubError(
        400, "bad_request", f"{name}={quoted(value)} is not allowed; use {name}=1 or {name}=0"
    )


def _attach_transport(
    ctx: WebContext, session: Session, receive: Any, send: Any
) -> tuple[Transport, str]:
    """The session's transport, attached, and which write path it takes: "direct" or
    "asgi"."""
    native = native_websocket(send)
    if native is not None:
        # Served on the connection's own task (plain HTTP/1.1, compression off).
        native.attach(session)
        return native, "direct" if native.direct else "asgi"
    stream = hypercorn_stream(send)
    if stream is not None and not ctx.settings.hub.compression:
        refuse_compression(stream)
        fast = HypercornTransport(receive, send, stream)
        fast.attach(session)
        return fast, "direct" if fast.direct else "asgi"
    plain = AsgiTransport(receive, send)
    plain.attach(session)
    return plain, "asgi"


async def handle_websocket(ctx: WebContext, scope: Scope, receive: Any, send: Any) -> None:
    """Serve one WebSocket request from handshake to close."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] not in SUBSCRIBE_PATHS:
        ctx.hub.rejected.add(404, "not_found")
        await send_error(
            send,
            404,
            "not_found",
            f"no WebSocket endpoint at {quoted(scope['path'])}; subscribe at /v1/ws/subscribe",
            websocket=True,
        )
        return
    ip, request = _read_request(ctx, scope)
    try:
        if isinstance(request, HubError):
            raise request
        subprotocol = request.subprotocol
        session = await join(
            ctx.backplane,
            request.principal,
            ip,
            request.event_types,
            batch=request.batch,
            since=request.since,
        )
    except HubError as exc:
        _rejected(ctx, ip, exc)
        await send_error(send, exc.status, exc.code, exc.message, websocket=True)
        return
    del request
    try:
        transport, write = _attach_transport(ctx, session, receive, send)
        event(
            log,
            logging.INFO,
            "connected",
            client_id=session.client_id,
            ip=ip,
            principal=session.principal.name,
            channels=session.subscriptions,
            batch=session.batch,
            # Which write path serves it: "direct" (hubd's own socket writes, plain TCP)
            # or "asgi" (TLS, compression, or a server hubd does not know).
            write=write,
        )
        accept: Message = {"type": "websocket.accept"}
        if subprotocol is not None:
            accept["subprotocol"] = subprotocol
        await send(accept)
        # Nothing reads the handshake's scope again, but every frame from the server's
        # down to this one holds it for as long as the connection lives: its headers and
        # query (~1.5 KB per idle connection, docs/performance.md) go now.
        scope.clear()
        await serve_session(ctx.hub, session, transport)
    finally:
        ctx.hub.unregister(session)
        ctx.backplane.release(session)
