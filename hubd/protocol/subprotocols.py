"""Credentials carried in `Sec-WebSocket-Protocol`, for clients that cannot set headers.

A browser's `WebSocket` cannot send `Authorization` or `X-Api-Key`, and a token in the
URL ends up in proxy logs and the browser history. So a client may offer its credential
as a subprotocol beside `hubd.v1` (the way Kubernetes does it):

    Sec-WebSocket-Protocol: hubd.v1, bearer.<base64url of the token>
    Sec-WebSocket-Protocol: hubd.v1, apikey.<base64url of the API key>

base64url (RFC 4648 section 5) without `=` padding, because a subprotocol is an HTTP token
and may hold only `A-Z a-z 0-9 - _` of what base64 writes. The server selects `hubd.v1`
in its answer, never the credential, so the secret is not echoed back. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

HUBD_V1 = "hubd.v1"
BEARER = "bearer."
APIKEY = "apikey."

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class SubprotocolError(ValueError):
    """An offer hubd refuses; the message says what is wrong and what is allowed (it
    never repeats the secret)."""

    def __init__(self, message: str, *, credential: bool) -> None:
        super().__init__(message)
        self.message = message
        # True: the credential itself is unreadable (401); False: the offer is malformed (400).
        self.credential = credential


@dataclass(frozen=True, slots=True)
class Offer:
    """What a handshake's subprotocol list asks for."""

    # The subprotocol to select in the answer: `hubd.v1` when offered, else None.
    selected: str | None = None
    kind: Literal["token", "api_key"] | None = None
    secret: str | None = None


NO_OFFER = Offer()


def encode(secret: str) -> str:
    """base64url of `secret`'s UTF-8 bytes, without padding."""
    return base64.urlsafe_b64encode(secret.encode()).decode().rstrip("=")


def offer_token(token: str) -> list[str]:
    """The subprotocol list a client offers to authenticate with a bearer token."""
    return [HUBD_V1, BEARER + encode(token)]


def offer_api_key(key: str) -> list[str]:
    """The subprotocol list a client offers to authenticate with an API key."""
    return [HUBD_V1, APIKEY + encode(key)]


def parse(subprotocols: Sequence[str]) -> Offer:
    """Read a handshake's subprotocols (in the order offered). Other subprotocols are
    ignored. Raises `SubprotocolError` for more than one credential, a credential offered
    without `hubd.v1`, or a credential that is not base64url of UTF-8 text."""
    selected = HUBD_V1 if HUBD_V1 in subprotocols else None
    credentials = [p for p in subprotocols if p.startswith((BEARER, APIKEY))]
    if not credentials:
        return Offer(selected=selected) if selected else NO_OFFER
    if len(credentials) > 1:
        raise SubprotocolError(
            f"Sec-WebSocket-Protocol offers {len(credentials)} credentials; offer one "
            "'bearer.<base64url token>' or 'apikey.<base64url key>'",
            credential=False,
        )
    if selected is None:
        raise SubprotocolError(
            "a credential in Sec-WebSocket-Protocol must be offered beside 'hubd.v1', "
            "the subprotocol the server selects (e.g. 'hubd.v1, bearer.<base64url token>')",
            credential=False,
        )
    (credential,) = credentials
    bearer = credential.startswith(BEARER)
    prefix = BEARER if bearer else APIKEY
    secret = _decode(credential[len(prefix) :], prefix)
    return Offer(selected=selected, kind="token" if bearer else "api_key", secret=secret)


def _decode(text: str, prefix: str) -> str:
    what = f"the {prefix.rstrip('.')!r} subprotocol"
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise SubprotocolError(
            f"{what} must hold the credential in base64url without padding (A-Z a-z 0-9 - _)",
            credential=True,
        )
    try:
        secret = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise SubprotocolError(
            f"{what} does not decode to UTF-8 text; encode the credential's UTF-8 bytes "
            "in base64url",
            credential=True,
        ) from None
    if not secret.strip():
        raise SubprotocolError(f"{what} holds an empty credential", credential=True)
    return secret
