"""Every HTTP error is JSON: `{"error": "<code>", "message": "<sentence>"}`."""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()

JSON_HEADERS = [(b"content-type", b"application/json")]


def error_body(code: str, message: str) -> bytes:
    return _encoder.encode({"error": code, "message": message})


def json_bytes(value: object) -> bytes:
    return _encoder.encode(value)
