"""The ASGI application hubd serves: WebSockets go to the lean subscribe handler,
`POST /v1/events` to the lean publish handler, `/console` to the console's static files,
every other scope to the Quart-Trio app. Requests arriving on the metrics listener are
answered by the metrics handler only. Every response any of them builds goes through
web/responses.py."""

from __future__ import annotations

from typing import Any

import trio

from hubd.protocol.quoting import quoted
from hubd.web.console import is_console, load_assets, serve_console
from hubd.web.context import WebContext
from hubd.web.http import create_http_app, route_of
from hubd.web.publish_route import handle_publish, is_publish
from hubd.web.responses import PROMETHEUS, send_error, send_response
from hubd.web.ws import handle_websocket


class HubdApp:
    """ASGI 3 application."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.http = create_http_app(ctx)
        self.console = load_assets()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        ctx = self.ctx
        if kind == "http" and _length_is_ambiguous(scope):
            await _refuse_ambiguous_length(ctx, scope, send)
        elif kind in ("http", "websocket") and _on_metrics_listener(ctx, scope):
            await _metrics_listener(ctx, scope, receive, send)
        elif kind == "websocket":
            await handle_websocket(ctx, scope, receive, send)
        elif kind == "http":
            route = route_of(scope["path"])

            # Quart-Trio cancels its per-request nursery while Hypercorn may still be inside
            # send() closing the stream; shielding send lets the response (and the
            # Connection: close) complete instead of leaving the socket open.
            async def counted_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    ctx.http_counts.add(route, message["status"])
                with trio.CancelScope(shield=True):
                    await send(message)

            if is_publish(scope):
                await handle_publish(ctx, scope, receive, counted_send)
            elif is_console(scope["path"]):
                await serve_console(self.console, ctx.settings.console.enabled, scope, counted_send)
            else:
                await self.http(scope, receive, counted_send)
        else:
            await self.http(scope, receive, send)


_FRAMING = (b"content-length", b"transfer-encoding")


def _length_is_ambiguous(scope: Any) -> bool:
    """Whether a request carries both Content-Length and Transfer-Encoding (ASGI header
    names are lower case)."""
    seen = {name for name, _ in scope["headers"] if name in _FRAMING}
    return len(seen) == 2


async def _refuse_ambiguous_length(ctx: WebContext, scope: Any, send: Any) -> None:
    """400 and `Connection: close`, before any route reads the body: with both headers a
    proxy in front may have framed the body differently, and whatever follows on this
    connection could be a smuggled request (RFC 9112 section 6.1 says close it)."""
    ctx.http_counts.add(route_of(scope["path"]), 400)
    # Shielded like every HTTP send (see HubdApp): the close must complete.
    with trio.CancelScope(shield=True):
        await send_error(
            send,
            400,
            "bad_request",
            "the request has both Content-Length and Transfer-Encoding; a request must use "
            "one of them to frame its body",
            close=True,
        )


def _on_metrics_listener(ctx: WebContext, scope: Any) -> bool:
    address = ctx.metrics_address
    server = scope.get("server")
    if address is None or server is None:
        return False
    host, port = address
    # A wildcard bind (0.0.0.0, ::) sees connections on whatever local address they used.
    return bool(server[1] == port and (host in ("0.0.0.0", "::") or server[0] == host))


async def _metrics_listener(ctx: WebContext, scope: Any, receive: Any, send: Any) -> None:
    """The metrics address serves GET /metrics without credentials, and nothing else."""
    message = f"no endpoint at {quoted(scope['path'])} on the metrics listener; use /metrics"
    if scope["type"] == "websocket":
        # Refused before the upgrade with a JSON 404, like any other path here.
        if (await receive())["type"] == "websocket.connect":
            await send_error(send, 404, "not_found", message, websocket=True)
        return
    head = scope["method"] == "HEAD"
    if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD") and ctx.metrics:
        body = ctx.metrics.render()  # counted after: this request shows in the next one
        ctx.http_counts.add("/metrics", 200)
        await send_response(send, 200, body, PROMETHEUS, head=head)
    else:
        ctx.http_counts.add("other", 404)
        await send_error(send, 404, "not_found", message, head=head)
