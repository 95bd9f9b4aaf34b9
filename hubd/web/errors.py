"""The errors the web layer raises itself, about the request body. Each is answered
with the JSON error payload (hubd/web/responses.py)."""

from __future__ import annotations

from hubd.core.errors import HubError


def payload_too_large(limit: int, size: object = None) -> HubError:
    """413 for a request body over `hub.max_publish_bytes` (`limit`). `size`: what is known
    of the body's size, or None when only that it exceeds the limit."""
    if size is None:
        detail = f"the request body exceeds the limit of {limit} bytes"
    else:
        detail = f"the request body is {size} bytes; the limit is {limit} bytes"
    return HubError(413, "payload_too_large", f"{detail} (hub.max_publish_bytes)")


def request_timeout(seconds: float) -> HubError:
    """408 for a request body that did not arrive within `server.body_timeout`."""
    return HubError(
        408,
        "request_timeout",
        f"the request body did not arrive within {seconds:g} s (server.body_timeout)",
    )
