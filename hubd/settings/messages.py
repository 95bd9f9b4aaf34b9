"""msgspec's validation messages (`Object contains unknown field ... - at $.hub`) turned
into ones that name the key by its path (`unknown key 'idle_timout' in [hub]`)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`(?: - at `(?P<at>[^`]*)`)?$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`(?: - at `(?P<at>[^`]*)`)?$")
_AT = re.compile(r"^(?P<what>.*) - at `(?P<at>[^`]*)`$", re.S)
_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
    "null": "absent",
}


_SECTIONS = ("[server]", "[hub]", "[limits]", "[auth]", "[log]", "[metrics]", "[backplane]")


def _dotted(at: str | None) -> str:
    return (at or "$").removeprefix("$").removeprefix(".")


def _section(at: str | None) -> str:
    path = _dotted(at)
    return f"[{path}]" if path else "the top level"


def _lookup(raw: Any, dotted: str) -> Any:
    node = raw
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def translate(exc: msgspec.ValidationError, raw: dict[str, Any]) -> str:
    """The message for `exc`, raised converting `raw` (the parsed TOML)."""
    text = str(exc)
    if m := _UNKNOWN.match(text):
        if not m["at"]:
            return f"unknown section [{m['key']}]; known sections are {', '.join(_SECTIONS)}"
        return f"unknown key '{m['key']}' in {_section(m['at'])}"
    if m := _MISSING.match(text):
        return f"missing key '{m['key']}' in {_section(m['at'])}"
    m = _AT.match(text)
    if not m:
        return text
    what, path = m["what"], _dotted(m["at"])
    try:
        got = _show(_lookup(raw, path))
    except (KeyError, IndexError, TypeError):
        got = "?"
    if cm := re.match(r"^Expected `(\w+)` (>=|>|<=|<) (\S+)$", what):
        return f"{path} must be {cm[2]} {cm[3]}, got {got}"
    if cm := re.match(r"^Expected `(\w+)`, got `(\w+)`$", what):
        return f"{path} must be {_TYPES.get(cm[1], cm[1])}, got {got}"
    if cm := re.match(r"^Expected `(\w+) \| null`, got `(\w+)`$", what):
        return f"{path} must be {_TYPES.get(cm[1], cm[1])}, got {got}"
    if what.startswith("Invalid enum value"):
        return f"{path} has {got}, which is not allowed{_allowed(path)}"
    # __post_init__ ValueErrors arrive with the struct's path; their text starts with the
    # field's relative path (".channels[0] ...") or with " " when about the whole table.
    if what.startswith((".", " ")):
        return f"{path}{what}" if path else what.lstrip(". ")
    return f"{path}: {what}" if path else what


def _allowed(path: str) -> str:
    leaf = re.sub(r"\[\d+\]", "", path)
    choices = {
        "hub.slow_consumer": "'drop_oldest', 'disconnect'",
        "log.level": "'debug', 'info', 'warning', 'error'",
        "log.format": "'text', 'json'",
        "backplane.kind": "'memory', 'redis'",
        "limits.client_ip_header": "'x-forwarded-for', 'x-real-ip'",
        "auth.tokens.roles": "'subscriber', 'publisher', 'admin'",
        "auth.api_keys.roles": "'subscriber', 'publisher', 'admin'",
    }.get(leaf)
    return f"; use one of {choices}" if choices else ""
