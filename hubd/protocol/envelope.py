"""Server → client envelopes and client → server frames.

Every server frame is one JSON text frame holding one `Envelope`. Field order is the
wire order; `None` fields are omitted, so `ref_id` appears only on replies, `body`
only when it is not null and `client_id` only on frames targeted at one client.
"""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from hubd.protocol.jsondepth import MAX_JSON_DEPTH, too_deep


class Envelope(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One event as subscribers see it. Declaration order is wire order."""

    id: str
    ref_id: str | None = None
    event_type: str
    timestamp: str
    message: str
    body: Any = None
    client_id: str | None = None


class ClientFrame(msgspec.Struct):
    """What a subscriber may send: `{"event_type": .., "message": .., "id": ..}`.

    Unknown extra keys are tolerated so that clients can add their own metadata.
    """

    event_type: str
    message: str
    id: str | None = None


class PublishEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One event in a publish request body."""

    event_type: str
    message: str
    body: Any = None
    client_id: str | None = None


_encoder = msgspec.json.Encoder()
_frame_decoder = msgspec.json.Decoder(ClientFrame)


def encode(envelope: Envelope) -> str:
    """Encode an envelope to the text of one WebSocket frame."""
    return _encoder.encode(envelope).decode()


def encode_bytes(envelope: Envelope) -> bytes:
    """Encode an envelope to the UTF-8 JSON payload of one WebSocket frame."""
    return _encoder.encode(envelope)


def decode_envelope(data: str | bytes) -> Envelope:
    """Decode a server frame (used by clients and tests)."""
    return msgspec.json.decode(data, type=Envelope)


class FrameError(ValueError):
    """A client frame that the server cannot act on; the text says what is accepted."""


_TOO_DEEP = (
    f"frame nests JSON arrays and objects more than {MAX_JSON_DEPTH} levels deep; "
    f"at most {MAX_JSON_DEPTH} are allowed"
)


def decode_client_frame(data: str | bytes) -> ClientFrame:
    """Decode one client frame or raise `FrameError` naming what was wrong.

    Nesting deeper than `MAX_JSON_DEPTH` is refused before decoding (extra keys are
    tolerated, and the decoder recurses once per level even to skip them)."""
    if too_deep(data):
        raise FrameError(_TOO_DEEP)
    try:
        return _frame_decoder.decode(data)
    except RecursionError:
        # Backstop for malformed input that the depth check reads differently.
        raise FrameError(_TOO_DEEP) from None
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            raise FrameError(_describe_frame_problem(str(exc))) from None
        raise FrameError(
            "frame is not valid JSON; send a JSON object such as "
            '{"event_type": "health", "message": "ping", "id": "1"}'
        ) from None


def _describe_frame_problem(detail: str) -> str:
    if detail.startswith("Expected `object`"):
        return (
            "frame must be a JSON object with string fields 'event_type' and 'message' "
            "(and optionally 'id')"
        )
    if "missing required field" in detail:
        field = detail.split("`")[1]
        return f"frame is missing the '{field}' field; every frame needs 'event_type' and 'message'"
    if "` - at `$." in detail:
        field = detail.rsplit("$.", 1)[1].rstrip("`")
        return f"frame field '{field}' must be a string"
    return f"frame is not acceptable ({detail})"


def new_id() -> str:
    """A fresh event id: 64 lowercase hex characters (256 random bits)."""
    return os.urandom(32).hex()


def utc_timestamp() -> str:
    """Now as RFC 3339 UTC with microseconds and a `Z` suffix."""
    return format_utc(time.time())


# The formatted second of the last timestamp: every notice (a pong, an error reply) and
# every event without its own timestamp carries one, and formatting a datetime is most of
# what building a small notice costs; within one second only the microseconds change.
_second: int | None = None
_second_text = ""


def format_utc(at: float) -> str:
    """`at` (seconds since the epoch) as `utc_timestamp` writes it: what
    `datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")` gives, microseconds
    rounded as datetime rounds them, with the date and time formatted once per second."""
    global _second, _second_text
    whole = math.floor(at)
    micros = round((at - whole) * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    if whole != _second:
        _second_text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second = whole
    return f"{_second_text}{micros:06d}Z"
