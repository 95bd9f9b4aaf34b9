"""hubctl's own failure: bad input from the user (not from the server)."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user (not from the server): exit 2 with this message."""
