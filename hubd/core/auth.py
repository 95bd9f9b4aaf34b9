"""Credentials → principals. Secrets are compared in constant time and never logged."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from hubd.core.errors import HubError
from hubd.protocol.channels import GLOBAL
from hubd.protocol.subprotocols import NO_OFFER, Offer
from hubd.settings import AuthSettings

CredentialKind = Literal["token", "api_key"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a name, roles, and an optional channel allow-list."""

    name: str
    roles: frozenset[str]
    channels: frozenset[str] | None
    kind: CredentialKind
    # sha256 of the secret it authenticated with: how a reload finds the same credential.
    digest: bytes = field(default=b"", compare=False, repr=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_subscribe(self) -> bool:
        return self.is_admin or "subscriber" in self.roles

    @property
    def can_publish(self) -> bool:
        return self.is_admin or "publisher" in self.roles

    def allows(self, channel: str) -> bool:
        """Whether the allow-list admits `channel` (`global` is always admitted)."""
        return channel == GLOBAL or self.channels is None or channel in self.channels


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    principal: Principal


class Authenticator:
    """Looks presented secrets up among the configured credentials."""

    def __init__(self, settings: AuthSettings) -> None:
        self._tokens = [
            _Entry(c.digest, _principal(c.name, c.roles, c.channels, "token", c.digest))
            for c in settings.tokens
        ]
        self._api_keys = [
            _Entry(c.digest, _principal(c.name, c.roles, c.channels, "api_key", c.digest))
            for c in settings.api_keys
        ]

    def find(self, kind: CredentialKind, digest: bytes) -> Principal | None:
        """The principal now configured for the secret with this sha256 (None if removed)."""
        for entry in self._tokens if kind == "token" else self._api_keys:
            if entry.digest == digest:
                return entry.principal
        return None

    def authenticate(
        self,
        authorization: str | None,
        api_key: str | None,
        access_token: str | None = None,
        offer: Offer = NO_OFFER,
    ) -> Principal:
        """Resolve the first credential presented, in this order: `Authorization: Bearer`,
        `X-Api-Key`, a `bearer.`/`apikey.` WebSocket subprotocol (`offer`, already
        decoded), `?access_token=`. Raises `HubError(401)` when none is presented or the
        one presented is unknown."""
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise HubError(
                    401,
                    "unauthorized",
                    "the Authorization header must be 'Bearer <token>'; "
                    "other schemes are not accepted",
                )
            return self._match(self._tokens, value.strip(), "bearer token")
        if api_key is not None:
            return self._match(self._api_keys, api_key.strip(), "API key")
        if offer.secret is not None:
            if offer.kind == "token":
                return self._match(self._tokens, offer.secret, "bearer token")
            return self._match(self._api_keys, offer.secret, "API key")
        if access_token is not None:
            return self._match(self._tokens, access_token, "access_token")
        raise HubError(
            401,
            "unauthorized",
            "no credentials: send 'Authorization: Bearer <token>', 'X-Api-Key: <key>', "
            "the access_token query parameter, or (WebSocket) the subprotocol "
            "'bearer.<base64url token>' beside 'hubd.v1'",
        )

    @staticmethod
    def _match(entries: list[_Entry], secret: str, what: str) -> Principal:
        digest = hashlib.sha256(secret.encode()).digest()
        found: Principal | None = None
        # Compare against every entry so the time taken does not depend on which matched.
        for entry in entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        if found is None:
            raise HubError(401, "unauthorized", f"the {what} presented is not valid")
        return found


def _principal(
    name: str,
    roles: Iterable[str],
    channels: Iterable[str] | None,
    kind: CredentialKind,
    digest: bytes,
) -> Principal:
    return Principal(
        name=name,
        roles=frozenset(roles),
        channels=None if channels is None else frozenset(channels),
        kind=kind,
        digest=digest,
    )
