"""Reading an ASGI scope, for the handlers served below the Quart-Trio app."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs


def headers(scope: Any) -> dict[str, str]:
    """Request headers with lower-cased names (the last of repeated names wins)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def query(scope: Any) -> dict[str, str]:
    """Query parameters, blank values kept (the last of repeated names wins)."""
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}
