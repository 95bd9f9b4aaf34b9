"""What the web layer needs from the rest of the daemon."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hubd.core.auth import Authenticator, Principal
from hubd.core.clientip import Network
from hubd.core.hub import Hub
from hubd.settings import Settings


@dataclass(slots=True)
class WebContext:
    settings: Settings
    hub: Hub
    auth: Authenticator
    trusted_proxies: tuple[Network, ...]

    def authenticate(self, headers: Mapping[str, str], access_token: str | None) -> Principal:
        """Authenticate from lower-cased request headers and the access_token query value."""
        return self.auth.authenticate(
            headers.get("authorization"), headers.get("x-api-key"), access_token
        )
