"""The [auth] section: the credentials a client presents, each a clear secret or its
sha256 digest, with the roles and channels it grants."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import msgspec

from hubd.settings.fields import unique

Role = Literal["subscriber", "publisher", "admin"]
ROLES: tuple[str, ...] = ("subscriber", "publisher", "admin")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _check_secret(secret: str | None, digest: str | None, plain: str, hashed: str) -> None:
    if (secret is None) == (digest is None):
        raise ValueError(f" must set exactly one of '{plain}' or '{hashed}'")
    if secret is not None and not secret:
        raise ValueError(f".{plain} must not be empty")
    if digest is not None and not _HEX64.match(digest):
        raise ValueError(f".{hashed} must be 64 lowercase hex characters (a sha256 digest)")


class Credential(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    roles: list[Role]
    channels: list[str] | None = None

    def _check_common(self) -> None:
        if not self.name:
            raise ValueError(".name must not be empty")
        if not self.roles:
            raise ValueError(f".roles must list at least one of {', '.join(ROLES)}")
        if self.channels is not None:
            unique(self.channels, "channels")


class TokenCredential(Credential, frozen=True):
    token: str | None = None
    token_sha256: str | None = None

    def __post_init__(self) -> None:
        self._check_common()
        _check_secret(self.token, self.token_sha256, "token", "token_sha256")

    @property
    def digest(self) -> bytes:
        if self.token is not None:
            return hashlib.sha256(self.token.encode()).digest()
        assert self.token_sha256 is not None
        return bytes.fromhex(self.token_sha256)


class ApiKeyCredential(Credential, frozen=True):
    key: str | None = None
    key_sha256: str | None = None

    def __post_init__(self) -> None:
        self._check_common()
        _check_secret(self.key, self.key_sha256, "key", "key_sha256")

    @property
    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    tokens: list[TokenCredential] = msgspec.field(default_factory=list)
    api_keys: list[ApiKeyCredential] = msgspec.field(default_factory=list)
