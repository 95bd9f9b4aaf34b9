"""Quoting what a client sent, for error messages and log lines.

Every value a client chose (an Origin, a path, a channel name, an id) that an error
message or a log line repeats goes through `quoted`, so that what hubd writes back or
logs stays small however large the request was: a 100 KB header repeated in a 403 and
in the log would otherwise cost 200 KB per request, unauthenticated. Pure: no trio.
"""

from __future__ import annotations

# Characters of a client's value that a message repeats; the rest is cut and marked "…".
QUOTE_LIMIT = 120


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` as `repr` shows a string (quoted, control characters escaped), cut to its
    first `limit` characters with "…" inside the closing quote when it was longer.

    A value of at most `limit` characters comes out exactly as `repr(str(value))`."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit] + "…")
    return repr(text)
