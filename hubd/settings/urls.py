"""URLs from the configuration as they may be shown: in logs, in `hubd check-config`."""

from __future__ import annotations

from urllib.parse import urlsplit


def safe_url(url: str) -> str:
    """`url` with its password, if any, replaced by `***`; the rest as written (an IPv6
    host keeps its brackets)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()
