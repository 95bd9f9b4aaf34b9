"""The Redis client's options, from `backplane.url`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def client_options(url: str) -> dict[str, Any]:
    """coredis.Redis keyword arguments for a `redis://`, `rediss://` or `unix://` URL."""
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    if parts.scheme == "unix":
        options["unix_socket_path"] = parts.path
        db = parse_qs(parts.query).get("db", ["0"])[-1]
        options["db"] = int(db) if db.isdigit() else 0
    else:
        options["host"] = parts.hostname or "127.0.0.1"
        options["port"] = parts.port or 6379
        options["ssl"] = parts.scheme == "rediss"
        db = parts.path.strip("/")
        options["db"] = int(db) if db.isdigit() else 0
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return options


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url
