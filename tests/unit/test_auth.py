"""Credentials → principals: header precedence, 401s, digests, roles and allow-lists."""

from __future__ import annotations

import hashlib

import pytest

from hubd.core.auth import Authenticator
from hubd.core.errors import HubError

from .conftest import make_settings, principal

CONFIG = f"""
[hub]
channels = ["backups"]

[[auth.tokens]]
name = "alice"
token = "alice-token"
roles = ["subscriber"]
channels = ["pdfm", "health"]

[[auth.tokens]]
name = "hashed"
token_sha256 = "{hashlib.sha256(b"hashed-token").hexdigest()}"
roles = ["publisher"]

[[auth.tokens]]
name = "root"
token = "root-token"
roles = ["admin"]

[[auth.api_keys]]
name = "vm-monitor"
key = "k-123"
roles = ["publisher"]

[[auth.api_keys]]
name = "hashed-key"
key_sha256 = "{hashlib.sha256(b"hashed-key").hexdigest()}"
roles = ["subscriber", "publisher"]
"""


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator(make_settings(CONFIG, credentials=False).auth)


def unauthorized(auth: Authenticator, *args: str | None) -> HubError:
    with pytest.raises(HubError) as info:
        auth.authenticate(*args)
    assert info.value.status == 401
    assert info.value.code == "unauthorized"
    return info.value


def test_bearer_token(auth: Authenticator) -> None:
    p = auth.authenticate("Bearer alice-token", None)
    assert p.name == "alice"
    assert p.kind == "token"
    assert p.roles == {"subscriber"}
    assert p.channels == frozenset({"pdfm", "health"})


@pytest.mark.parametrize(
    "header", ["bearer alice-token", "BEARER alice-token", " Bearer  alice-token "]
)
def test_bearer_scheme_is_case_insensitive_and_trimmed(auth: Authenticator, header: str) -> None:
    assert auth.authenticate(header, None).name == "alice"


def test_api_key(auth: Authenticator) -> None:
    p = auth.authenticate(None, "k-123")
    assert (p.name, p.kind, p.channels) == ("vm-monitor", "api_key", None)


def test_access_token_query_parameter(auth: Authenticator) -> None:
    assert auth.authenticate(None, None, "root-token").name == "root"


def test_bearer_wins_over_api_key_and_access_token(auth: Authenticator) -> None:
    assert auth.authenticate("Bearer root-token", "k-123", "alice-token").name == "root"


def test_api_key_wins_over_access_token(auth: Authenticator) -> None:
    assert auth.authenticate(None, "k-123", "root-token").name == "vm-monitor"


def test_a_bad_bearer_is_not_rescued_by_a_good_api_key(auth: Authenticator) -> None:
    unauthorized(auth, "Bearer wrong", "k-123", None)


def test_no_credentials_is_401(auth: Authenticator) -> None:
    err = unauthorized(auth, None, None, None)
    assert "Bearer" in err.message and "X-Api-Key" in err.message


@pytest.mark.parametrize(
    "header", ["Basic YWxpY2U6cHc=", "Token alice-token", "alice-token", "Bearer", "Bearer   "]
)
def test_wrong_scheme_or_empty_bearer_is_401(auth: Authenticator, header: str) -> None:
    err = unauthorized(auth, header, None, None)
    assert "Bearer <token>" in err.message


@pytest.mark.parametrize(
    "args",
    [
        ("Bearer nope", None, None),
        (None, "nope", None),
        (None, None, "nope"),
        (None, "", None),
        ("Bearer alice-tokenX", None, None),
    ],
)
def test_unknown_secret_is_401(auth: Authenticator, args: tuple[str | None, ...]) -> None:
    unauthorized(auth, *args)


def test_tokens_and_api_keys_are_separate(auth: Authenticator) -> None:
    unauthorized(auth, "Bearer k-123", None, None)
    unauthorized(auth, None, "alice-token", None)
    unauthorized(auth, None, None, "k-123")


def test_secret_is_not_echoed_in_the_error(auth: Authenticator) -> None:
    err = unauthorized(auth, "Bearer my-guess-123", None, None)
    assert "my-guess-123" not in err.message


def test_sha256_configured_credentials_work(auth: Authenticator) -> None:
    assert auth.authenticate("Bearer hashed-token", None).name == "hashed"
    assert auth.authenticate(None, "hashed-key").name == "hashed-key"
    assert auth.authenticate(None, None, "hashed-token").name == "hashed"


def test_sha256_configured_credential_refuses_its_digest_as_secret(auth: Authenticator) -> None:
    unauthorized(auth, f"Bearer {hashlib.sha256(b'hashed-token').hexdigest()}", None, None)


# -- roles and allow-lists -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "subscribe", "publish", "admin"),
    [
        (["subscriber"], True, False, False),
        (["publisher"], False, True, False),
        (["subscriber", "publisher"], True, True, False),
        (["admin"], True, True, True),
    ],
)
def test_roles(roles: list[str], subscribe: bool, publish: bool, admin: bool) -> None:
    p = principal(roles=roles)
    assert (p.can_subscribe, p.can_publish, p.is_admin) == (subscribe, publish, admin)


def test_without_allow_list_every_channel_is_allowed() -> None:
    p = principal(channels=None)
    assert all(p.allows(c) for c in ("global", "pdfm", "health", "backups"))


def test_allow_list_limits_channels_but_global_is_always_allowed() -> None:
    p = principal(channels=["pdfm"])
    assert p.allows("pdfm")
    assert p.allows("global")
    assert not p.allows("health")
    assert principal(channels=[]).allows("global")
