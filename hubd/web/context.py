"""What the web layer needs from the rest of the daemon."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hubd.backplane import Backplane, MemoryBackplane
from hubd.core.auth import Authenticator, Principal
from hubd.core.clientip import Network
from hubd.core.errors import HubError
from hubd.core.hub import Hub
from hubd.metrics import HttpCounts, Metrics
from hubd.protocol.subprotocols import NO_OFFER, Offer
from hubd.settings import Settings


@dataclass(slots=True)
class WebContext:
    """Shared by every handler. A reload swaps `settings`, `auth` and `trusted_proxies`
    in place (each handler reads them when a request arrives)."""

    settings: Settings
    hub: Hub
    auth: Authenticator
    # `settings.limits.trusted_proxies` parsed once, not on every handshake. Which header
    # names the client and the IPv6 prefix are read from `settings.limits` per handshake.
    trusted_proxies: tuple[Network, ...]
    http_counts: HttpCounts = field(default_factory=HttpCounts)
    metrics: Metrics | None = None
    # The (host, port) of the unauthenticated metrics listener, once bound.
    metrics_address: tuple[str, int] | None = None
    # False until every listener is serving; /v1/ready answers 503 until then.
    ready: bool = False
    # How events reach other nodes; None: this node alone (a MemoryBackplane).
    backplane: Backplane = field(default=None)  # type: ignore[assignment]
    # The configuration the process started with (what a reload cannot go beyond).
    started: Settings = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.settings
        if self.backplane is None:
            self.backplane = MemoryBackplane(self.hub)

    def authenticate(
        self, headers: Mapping[str, str], access_token: str | None, offer: Offer = NO_OFFER
    ) -> Principal:
        """Authenticate from lower-cased request headers, the access_token query value and
        (WebSocket handshakes) the credential offered as a subprotocol."""
        return self.auth.authenticate(
            headers.get("authorization"), headers.get("x-api-key"), access_token, offer
        )

    def require_admin(self, headers: Mapping[str, str], access_token: str | None) -> Principal:
        principal = self.authenticate(headers, access_token)
        if not principal.is_admin:
            raise HubError(
                403, "forbidden", f"principal {principal.name!r} lacks the 'admin' role needed here"
            )
        return principal
