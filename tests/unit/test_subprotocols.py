"""Reading the credential a client offers as a WebSocket subprotocol (pure)."""

from __future__ import annotations

import base64

import pytest

from hubd.protocol.subprotocols import (
    APIKEY,
    BEARER,
    HUBD_V1,
    NO_OFFER,
    SubprotocolError,
    encode,
    offer_api_key,
    offer_token,
    parse,
)


@pytest.mark.parametrize("secret", ["t", "dev-admin-token", "ünïcödé ✓", "a" * 300, "x?y=z/+"])
def test_encode_is_unpadded_base64url_and_parse_reads_it_back(secret: str) -> None:
    text = encode(secret)
    assert "=" not in text and "+" not in text and "/" not in text
    assert base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode() == secret
    offer = parse(offer_token(secret))
    assert (offer.selected, offer.kind, offer.secret) == (HUBD_V1, "token", secret)
    offer = parse(offer_api_key(secret))
    assert (offer.selected, offer.kind, offer.secret) == (HUBD_V1, "api_key", secret)


def test_no_credential() -> None:
    assert parse([]) == NO_OFFER
    assert parse(["chat", "v2"]) == NO_OFFER
    assert parse([HUBD_V1]).selected == HUBD_V1
    assert parse([HUBD_V1]).secret is None


def test_order_and_other_subprotocols_do_not_matter() -> None:
    offer = parse(["chat", BEARER + encode("tok"), "x", HUBD_V1])
    assert (offer.selected, offer.kind, offer.secret) == (HUBD_V1, "token", "tok")


@pytest.mark.parametrize(
    ("offered", "credential", "says"),
    [
        ([BEARER + encode("tok")], False, "beside 'hubd.v1'"),
        ([HUBD_V1, BEARER + encode("a"), BEARER + encode("b")], False, "offers 2 credentials"),
        ([HUBD_V1, BEARER + encode("a"), APIKEY + encode("b")], False, "offers 2 credentials"),
        ([HUBD_V1, BEARER], True, "base64url"),
        ([HUBD_V1, BEARER + "dG9r="], True, "base64url"),  # padding is not a token character
        ([HUBD_V1, BEARER + "dG9r+w"], True, "base64url"),  # '+' is base64, not base64url
        ([HUBD_V1, BEARER + "abcde"], True, "base64url"),  # 5 characters cannot be base64
        ([HUBD_V1, APIKEY + "_-8"], True, "UTF-8"),
        ([HUBD_V1, BEARER + encode("   ")], True, "empty"),
    ],
)
def test_refused_offers(offered: list[str], credential: bool, says: str) -> None:
    with pytest.raises(SubprotocolError) as info:
        parse(offered)
    assert info.value.credential is credential
    assert says in info.value.message


def test_the_message_never_repeats_the_secret() -> None:
    secret = "s3cr3t-value"
    for offered in (
        [BEARER + encode(secret)],
        [HUBD_V1, BEARER + encode(secret), APIKEY + encode(secret)],
        [HUBD_V1, BEARER + encode(secret) + "$"],
    ):
        with pytest.raises(SubprotocolError) as info:
            parse(offered)
        assert secret not in info.value.message and encode(secret) not in info.value.message
