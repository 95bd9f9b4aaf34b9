"""Server → client WebSocket frames (RFC 6455 §5.2), built once and shared.

Server frames are never masked and hubd sends each message in one frame, so a text
frame is the same bytes for every receiver: it is built once per event, not once per
subscriber.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed text frame carrying `payload` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload
