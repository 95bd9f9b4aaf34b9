"""Where a hubd is: one base URL gives both the HTTP endpoints and the WebSocket one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlencode, urlsplit

_SCHEMES = {"http": False, "ws": False, "https": True, "wss": True}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A hubd base URL: `http://host:port` (or `https://`, `ws://`, `wss://`), with an
    optional path prefix when hubd is served below one by a reverse proxy
    (`https://ops.example.com/hub`)."""

    tls: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Raise ValueError for anything but a plain base URL. A message shows the URL
        as `scheme://host:port/path` at most: never a `user:pass@` part, a query
        (`?access_token=...`) or a fragment, which may hold a secret."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid hubd URL: {exc}") from None
        if parts.username is not None or parts.password is not None:
            # Never echo it: the part before '@' may be a secret.
            raise ValueError("the hubd URL must not contain 'user:password@'; use a credential")
        shown = _shown(parts)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"the hubd URL {shown!r} must start with http://, https://, ws:// or wss://"
            )
        if not parts.hostname:
            raise ValueError(f"the hubd URL {shown!r} has no host")
        if parts.query or parts.fragment:
            raise ValueError(
                f"the hubd URL {shown!r} must not have a query or fragment (not shown here: "
                "it may hold a secret); pass the credential as a token or API key"
            )
        tls = _SCHEMES[scheme]
        return cls(
            tls=tls,
            host=parts.hostname,
            port=port if port is not None else (443 if tls else 80),
            prefix=parts.path.rstrip("/"),
        )

    @property
    def authority(self) -> str:
        """`host:port` for the Host header (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}{self.prefix}"

    def resource(self, path: str, query: Mapping[str, str] | None = None) -> str:
        """The request target for `path` (e.g. `/v1/ws/subscribe`) below the prefix."""
        target = f"{self.prefix}{path}"
        return f"{target}?{urlencode(query)}" if query else target

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def __str__(self) -> str:
        return self.base_url


def _shown(parts: SplitResult) -> str:
    """The URL as `scheme://host:port/path`, for messages (called once there is no
    `user:pass@` part): the query and the fragment left out."""
    scheme = f"{parts.scheme}://" if parts.scheme else ""
    return f"{scheme}{parts.netloc}{parts.path}"
