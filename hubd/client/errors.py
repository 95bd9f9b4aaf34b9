"""Every exception the client library raises derives from `ClientError`.

- `HubdError`: the server answered with an error (status, `error` code, `message`), on an
  HTTP endpoint or before a WebSocket upgrade. `AuthError` (401), `ForbiddenError` (403)
  and `ConflictError` (409) are the ones a retry cannot fix.
- `NetworkError`: the server could not be reached or the connection broke.
- `Disconnected`: a subscription without reconnect lost its connection.
- `ProtocolError`: the server sent something this library cannot read.

`outcome_unknown` says whether a request that failed may still have been carried out
(no answer after it was sent, a 504, an unreadable answer): re-sending it may do it twice.
`published_ids` holds, on an exception from `HubClient.publish_many`, the ids of the
events published before the failure.

Messages never contain a credential: only the server's message and what was asked.
"""

from __future__ import annotations

import json
from typing import Any


class ClientError(Exception):
    """Base of every error raised by `hubd.client`.

    `published_ids`: set by `HubClient.publish_many` to the ids of the events it had
    published (in order, a prefix of what it was given) before this failure; empty
    elsewhere."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.published_ids: list[str] = []

    @property
    def outcome_unknown(self) -> bool:
        """True when the request may have been carried out although it failed, so that
        sending it again may do it twice; False when it certainly was not."""
        return False


class HubdError(ClientError):
    """The server refused a request: `status` (HTTP), `code` (its `error` field, stable, to
    match on) and `message` (its sentence for humans, may change between versions)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    @property
    def outcome_unknown(self) -> bool:
        # 504 (`publish_outcome_unknown` from hubd, or a proxy's gateway timeout): the
        # request went further than the answer.
        return self.status == 504


class AuthError(HubdError):
    """401: no credential, or one the server does not know (revoked, mistyped)."""


class ForbiddenError(HubdError):
    """403: the credential is valid but lacks the role or the channel asked for."""


class ConflictError(HubdError):
    """409: `ip_in_use` (this address already holds a subscriber connection) or
    `not_subscribed` (a targeted publish to a client not on that channel)."""


class NetworkError(ClientError):
    """The server could not be reached, or the connection broke before an answer.

    `request_sent`: the request had been sent (the answer did not come, or the connection
    broke while it was sent or awaited), so the server may have carried it out."""

    def __init__(self, message: str, *, request_sent: bool = False) -> None:
        super().__init__(message)
        self.request_sent = request_sent

    @property
    def outcome_unknown(self) -> bool:
        return self.request_sent


class ProtocolError(ClientError):
    """The server sent a frame or a response body this library does not understand. For
    a request, an unreadable answer does not say whether it was carried out."""

    @property
    def outcome_unknown(self) -> bool:
        return True


class Disconnected(ClientError):
    """A subscription opened with `reconnect=False` lost its connection. `code` is the
    WebSocket close code (1006 when the connection ended without a close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed: {describe_close(self.code, self.reason)}"


_BY_STATUS: dict[int, type[HubdError]] = {
    401: AuthError,
    403: ForbiddenError,
    409: ConflictError,
}


def error_from_response(status: int, body: bytes | str | None) -> HubdError:
    """The `HubdError` subclass for an error answer; the server's JSON body
    `{"error": ..., "message": ...}` when it has one, else the start of the text."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    code, message = f"http_{status}", text.strip()[:300] or f"HTTP status {status}"
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str):
            code = parsed["error"]
        if isinstance(parsed.get("message"), str):
            message = parsed["message"]
    return _BY_STATUS.get(status, HubdError)(status, code, message)


_CLOSE_NAMES = {
    1000: "normal closure",
    1001: "server shutting down",
    1006: "connection lost without a close frame",
    1009: "message too big",
    1011: "server error",
    1013: "slow consumer",
    4401: "credentials revoked",
    4408: "idle timeout",
}


def describe_close(code: int, reason: str | None) -> str:
    """`1001 server shutting down`: the code, and the server's reason or a known name."""
    text = reason or _CLOSE_NAMES.get(code, "")
    return f"{code} {text}".rstrip()
