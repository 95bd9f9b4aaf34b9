"""The web console: a few static files shipped inside the package (hubd/console/static/),
served at /console with headers that keep the page to itself.

The files are read once, when the app is built, into memory (a few tens of KB): a request
never touches the disk, and what is served is what was installed with this version. The
page talks to the same origin only (the HTTP API and the subscribe socket, authenticated
with the credential the user typed), so the Content-Security-Policy allows nothing else:
no inline script or style, no other origin, no framing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from hubd.protocol.quoting import quoted
from hubd.web.responses import send_error
from hubd.web.scope import headers as scope_headers

PREFIX = "/console"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # frame-ancestors for browsers that predate it.
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    # Revalidate on every load (the ETag makes that a 304): after an upgrade the page
    # and its modules must come from the same version.
    (b"cache-control", b"no-cache"),
)

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes


def load_assets() -> dict[str, Asset]:
    """The console's files by URL path (`/console/app.js`; the page itself also at
    `/console` and `/console/`). Files of other types are not served."""
    assets: dict[str, Asset] = {}
    folder = resources.files("hubd") / "console" / "static"
    if not folder.is_dir():
        return assets
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in _TYPES:
            continue
        body = entry.read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
        assets[f"{PREFIX}/{entry.name}"] = Asset(body, _TYPES[suffix], etag)
    index = assets.get(f"{PREFIX}/index.html")
    if index is not None:
        assets[PREFIX] = assets[f"{PREFIX}/"] = index
    return assets


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


async def serve_console(assets: dict[str, Asset], enabled: bool, scope: Any, send: Any) -> int:
    """Answer one request under /console; returns the status sent. The body of a
    request (there should be none) is not read: GET and HEAD only."""
    path, method = scope["path"], scope["method"]
    if not enabled:
        return await _error(
            scope, send, 404, "not_found", "the console is disabled (console.enabled = false)"
        )
    asset = assets.get(path)
    if asset is None:
        return await _error(
            scope, send, 404, "not_found", f"no console file at {quoted(path)}; open /console"
        )
    if method not in ("GET", "HEAD"):
        return await _error(
            scope,
            send,
            405,
            "method_not_allowed",
            f"{quoted(method)} is not allowed on {quoted(path)}; use GET, HEAD",
        )
    if scope_headers(scope).get("if-none-match", "").encode("latin-1") == asset.etag:
        await send(
            {
                "type": "http.response.start",
                "status": 304,
                "headers": [(b"etag", asset.etag), *SECURITY_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return 304
    headers = [
        (b"content-type", asset.content_type),
        (b"content-length", b"%d" % len(asset.body)),
        (b"etag", asset.etag),
        *SECURITY_HEADERS,
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else asset.body})
    return 200


async def _error(scope: Any, send: Any, status: int, code: str, message: str) -> int:
    method = scope["method"]
    # A request other than GET/HEAD may have sent a body, left unread: close after it.
    await send_error(
        send,
        status,
        code,
        message,
        close=method not in ("GET", "HEAD"),
        head=method == "HEAD",
    )
    return status
