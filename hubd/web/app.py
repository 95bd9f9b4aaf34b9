"""The ASGI application hubd serves: WebSockets go to the lean subscribe handler,
`POST /v1/events` to the lean publish handler, every other scope to the Quart-Trio app."""

from __future__ import annotations

from typing import Any

import trio

from hubd.web.context import WebContext
from hubd.web.http import create_http_app
from hubd.web.publish_route import handle_publish, is_publish
from hubd.web.ws import handle_websocket


class HubdApp:
    """ASGI 3 application."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.http = create_http_app(ctx)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await handle_websocket(self.ctx, scope, receive, send)
        elif kind == "http":
            # Quart-Trio cancels its per-request nursery while Hypercorn may still be inside
            # send() closing the stream; shielding send lets the response (and the
            # Connection: close) complete instead of leaving the socket open.
            async def shielded_send(message: Any) -> None:
                with trio.CancelScope(shield=True):
                    await send(message)

            if is_publish(scope):
                await handle_publish(self.ctx, scope, receive, shielded_send)
            else:
                await self.http(scope, receive, shielded_send)
        else:
            await self.http(scope, receive, send)
