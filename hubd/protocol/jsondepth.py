"""How deeply untrusted JSON nests, measured before it is decoded.

msgspec (like the `json` module) recurses once per array or object level, so a small
document nested about a thousand deep raises `RecursionError` instead of a decode error.
`too_deep` reads only the bytes, with C-speed primitives (`count`, `replace`,
`translate`, `split` and one compiled regular expression with possessive repeats, so it
never backtracks): linear in the input, about 10-15 ms for a mebibyte made of nothing but
brackets, well under a millisecond for ordinary JSON. Pure: no trio, no msgspec.
"""

from __future__ import annotations

import functools
import re

# The deepest nesting of arrays and objects accepted in a publish body or a client frame,
# counting the outermost array or object as level 1. Real events nest a handful of levels;
# 64 keeps far below the interpreter's recursion limit (about 1,000).
MAX_JSON_DEPTH = 64

# Every byte except the structural ones that matter for depth: quotes (to find strings)
# and the four brackets.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
# Depth does not depend on the kind of bracket (a mismatched pair is invalid anyway).
_ONE_KIND = bytes.maketrans(b"{}", b"[]")


def _group(height: int) -> bytes:
    """A pattern for one balanced `[...]` group nesting at most `height` levels."""
    pattern = rb"\[\]"
    for _ in range(height - 1):
        pattern = rb"\[(?:" + pattern + rb")*+\]"
    return pattern


@functools.cache
def _within(limit: int) -> re.Pattern[bytes]:
    """A pattern matching exactly the bracket strings (only `[` and `]`) whose running
    depth never exceeds `limit`: balanced groups at most `limit` deep (or stray `]`, which
    the decoder refuses before recursing), then at most `limit` brackets left open, the
    groups after each of them shallower by one. Compiled once per limit and kept."""
    tail = b""
    for budget in range(limit):
        groups = rb"(?:" + _group(budget) + rb")*+" if budget else b""
        tail = rb"(?:\[" + groups + tail + rb")?"
    return re.compile(rb"(?:" + _group(limit) + rb"|\])*+" + tail)


# Compiled at import (about 40 ms), not by the first deep request inside the event loop.
_within(MAX_JSON_DEPTH)


def too_deep(data: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether decoding `data` as JSON could nest arrays and objects more than `limit`
    levels deep (the outermost array or object is level 1; `limit` is at least 1).

    Exact for well-formed JSON. Never False when a decoder reading `data` would go deeper
    than `limit` before failing; may be True for malformed input that a decoder would
    refuse earlier (a stray backslash or `]` outside a string, say). Brackets inside
    strings never count, escaped quotes included."""
    # Fast path, and the common case: at most `limit` opening brackets in all (strings
    # included) cannot nest deeper than that.
    if isinstance(data, str):
        if data.count("[") + data.count("{") <= limit:
            return False
        raw = data.encode("utf-8", "surrogatepass")
    else:
        if data.count(b"[") + data.count(b"{") <= limit:
            return False
        raw = data
    # Drop the escapes that could hide a quote: escaped backslashes first (so that `\\"`
    # still ends a string), then escaped quotes. Backslash runs pair from the left, as JSON
    # reads them inside a string.
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Keep quotes and brackets. With no escaped quote left, quotes alternate between
    # opening and closing a string: two adjacent ones enclose nothing that counts (most
    # strings hold no bracket and go here), and after that, splitting on quotes puts the
    # text outside strings at even positions.
    structure = raw.translate(None, _NOT_STRUCTURE)
    if b'"' in structure:
        structure = structure.replace(b'""', b"")
        if b'"' in structure:
            structure = b"".join(structure.split(b'"')[::2])
    brackets = structure.translate(_ONE_KIND)
    if brackets.count(b"[") <= limit:
        return False
    return _within(limit).fullmatch(brackets) is None
