"""Every HTTP error is JSON: `{"error": "<code>", "message": "<sentence>"}`."""

from __future__ import annotations

import msgspec

from hubd.core.errors import HubError

_encoder = msgspec.json.Encoder()

JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(code: str, message: str) -> bytes:
    return _encoder.encode({"error": code, "message": message})


def json_bytes(value: object) -> bytes:
    return _encoder.encode(value)


def payload_too_large(size: object, limit: int) -> HubError:
    """413 for a request body over `hub.max_publish_bytes`."""
    return HubError(
        413,
        "payload_too_large",
        f"the request body is {size} bytes; the limit is {limit} bytes (hub.max_publish_bytes)",
    )


def request_timeout(seconds: float) -> HubError:
    """408 for a request body that did not arrive within `server.body_timeout`."""
    return HubError(
        408,
        "request_timeout",
        f"the request body did not arrive within {seconds:g} s (server.body_timeout)",
    )
