"""The one error type the core raises for a refused request."""

from __future__ import annotations


class HubError(Exception):
    """A request the hub refuses, with the HTTP status, a stable code and a sentence.

    The web layer renders it as `{"error": code, "message": message}` with `status`.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"HubError({self.status}, {self.code!r}, {self.message!r})"


def too_many_channels(count: int, limit: int) -> HubError:
    """400 for a request (subscribe query, unsubscribe body) listing more channel names
    than `hub.max_channels_per_request`."""
    return HubError(
        400,
        "too_many_channels",
        f"the request lists {count} channel names; at most {limit} are allowed "
        "(hub.max_channels_per_request)",
    )
