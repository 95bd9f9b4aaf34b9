"""Every response hubd builds itself: the content types, the JSON error payload
`{"error": "<code>", "message": "<sentence>"}`, and the response in the two shapes the
web layer sends it: ASGI messages (the lean handlers: publish, subscribe, the metrics
listener, refused requests) and a Quart `Response` (the routes of the Quart-Trio app).

Headers, in this order: Content-Type, Content-Length, then `Connection: close` when the
connection cannot carry another request (the request body was left unread)."""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Response

from hubd import metrics

JSON = "application/json"
# Prometheus text exposition format 0.0.4 (what `Metrics.render` writes).
PROMETHEUS = metrics.CONTENT_TYPE

# The answer to an unexpected exception (logged where it was caught).
INTERNAL_ERROR = (500, "internal_error", "the server failed to handle this request")

_encoder = msgspec.json.Encoder()
_CONTENT_TYPE = {
    content_type: (b"content-type", content_type.encode()) for content_type in (JSON, PROMETHEUS)
}
_CLOSE = (b"connection", b"close")
# The types of a response's two messages.
_HTTP = ("http.response.start", "http.response.body")
_WEBSOCKET = ("websocket.http.response.start", "websocket.http.response.body")


def json_bytes(value: object) -> bytes:
    return _encoder.encode(value)


def error_body(code: str, message: str) -> bytes:
    """The body of every error response."""
    return _encoder.encode({"error": code, "message": message})


# ASGI: `send` is the ASGI send callable; `websocket` answers a WebSocket handshake with
# a plain HTTP response (the `websocket.http.response` extension) instead of accepting it.


async def send_response(
    send: Any,
    status: int,
    body: bytes,
    content_type: str = JSON,
    *,
    close: bool = False,
    websocket: bool = False,
    head: bool = False,
) -> None:
    """Send a whole response. Its Content-Length is the body's, even with `head` (a
    response to HEAD: the headers only, an empty body)."""
    headers = [_CONTENT_TYPE[content_type], (b"content-length", b"%d" % len(body))]
    if close:
        headers.append(_CLOSE)
    start, rest = _WEBSOCKET if websocket else _HTTP
    await send({"type": start, "status": status, "headers": headers})
    await send({"type": rest, "body": b"" if head else body})


async def send_json(send: Any, status: int, value: object) -> None:
    await send_response(send, status, json_bytes(value))


async def send_error(
    send: Any,
    status: int,
    code: str,
    message: str,
    *,
    close: bool = False,
    websocket: bool = False,
    head: bool = False,
) -> None:
    body = error_body(code, message)
    await send_response(send, status, body, close=close, websocket=websocket, head=head)


# Quart: the same payloads and headers as a `Response` for a route to return.


def quart_response(
    status: int, body: bytes, content_type: str = JSON, *, close: bool = False
) -> Response:
    response = Response(body, status=status, content_type=content_type)
    if close:
        response.headers["Connection"] = "close"
    return response


def json_response(status: int, value: object) -> Response:
    return quart_response(status, json_bytes(value))


def error_response(status: int, code: str, message: str, *, close: bool = False) -> Response:
    return quart_response(status, error_body(code, message), close=close)
