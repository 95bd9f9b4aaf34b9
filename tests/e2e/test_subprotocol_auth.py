"""The credential offered as a WebSocket subprotocol (`bearer.<base64url>` or
`apikey.<base64url>` beside `hubd.v1`), on a real daemon with a non-browser client: the
way a browser page authenticates (it cannot set headers), checked like the other ways."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from trio_websocket import ConnectionRejected

from hubd.protocol.subprotocols import APIKEY, BEARER, HUBD_V1, encode, offer_api_key, offer_token

from ..helpers import PUB, SUB, subscribe_path
from .conftest import StartHubd
from .helpers import SessionHubd, client_ip, rejection_error, ws_connect

pytestmark = pytest.mark.e2e

SUB_TOKEN = "sub-token"
SUB_API_KEY = "sub-key-secret"


async def _confirmation(ws: object) -> dict[str, object]:
    text = await ws.get_message()  # type: ignore[attr-defined]
    frame = json.loads(text)
    assert isinstance(frame, dict)
    return frame


@pytest.mark.parametrize(
    ("offer", "principal"),
    [
        pytest.param(offer_token(SUB_TOKEN), "sub", id="bearer"),
        pytest.param(offer_api_key(SUB_API_KEY), "sub-key", id="apikey"),
        pytest.param(list(reversed(offer_token(SUB_TOKEN))), "sub", id="credential-first"),
        pytest.param(["chat", *offer_token(SUB_TOKEN)], "sub", id="unknown-one-ignored"),
    ],
)
async def test_subprotocol_credential_subscribes_and_server_selects_hubd_v1(
    hub_server: SessionHubd, http: httpx.AsyncClient, offer: list[str], principal: str
) -> None:
    async with ws_connect(
        hub_server.port, client_ip(), subscribe_path("pdfm"), subprotocols=offer
    ) as ws:
        # The answer names hubd.v1, never the credential (the secret is not echoed back).
        assert ws.subprotocol == HUBD_V1
        confirmation = await _confirmation(ws)
        body = confirmation["body"]
        assert isinstance(body, dict)
        client_id = body["client_id"]
        clients = (
            await http.get("/v1/ws/clients", headers={"Authorization": "Bearer admin-token"})
        ).json()
        (mine,) = [c for c in clients["clients"] if c["client_id"] == client_id]
        assert mine["principal"] == principal
        published = await http.post(
            "/v1/events", headers=PUB, json={"event_type": "pdfm", "message": "via-subprotocol"}
        )
        assert published.status_code == 202, published.text
        event = json.loads(await ws.get_message())
        assert event["message"] == "via-subprotocol"


async def test_hubd_v1_alone_is_selected_beside_a_header_credential(
    hub_server: SessionHubd,
) -> None:
    async with ws_connect(
        hub_server.port, client_ip(), subscribe_path("pdfm"), SUB, subprotocols=[HUBD_V1]
    ) as ws:
        assert ws.subprotocol == HUBD_V1
    async with ws_connect(hub_server.port, client_ip(), subscribe_path("pdfm"), SUB) as ws:
        assert ws.subprotocol is None


@pytest.mark.parametrize(
    ("offer", "status", "code", "says"),
    [
        pytest.param(
            offer_token("not-a-token"),
            401,
            "unauthorized",
            "bearer token presented is not valid",
            id="unknown-token",
        ),
        pytest.param(
            offer_api_key("not-a-key"),
            401,
            "unauthorized",
            "API key presented is not valid",
            id="unknown-api-key",
        ),
        # An API key offered as a bearer token is looked up among the tokens only.
        pytest.param(
            [HUBD_V1, BEARER + encode(SUB_API_KEY)],
            401,
            "unauthorized",
            "not valid",
            id="api-key-as-bearer",
        ),
        pytest.param(
            offer_api_key("pub-key"),
            403,
            "forbidden",
            "lacks the 'subscriber' role",
            id="publisher-only-key",
        ),
        pytest.param(
            [BEARER + encode(SUB_TOKEN)],
            400,
            "bad_request",
            "beside 'hubd.v1'",
            id="without-hubd-v1",
        ),
        pytest.param(
            [HUBD_V1, BEARER + encode(SUB_TOKEN), APIKEY + encode(SUB_API_KEY)],
            400,
            "bad_request",
            "offers 2 credentials",
            id="two-credentials",
        ),
        pytest.param(
            [HUBD_V1, BEARER + "a"],
            401,
            "unauthorized",
            "base64url",
            id="truncated-base64url",
        ),
        pytest.param(
            [HUBD_V1, BEARER + "c3ViLXRva2Vu$"],
            401,
            "unauthorized",
            "base64url",
            id="not-base64url",
        ),
        pytest.param(
            [HUBD_V1, BEARER + "_-8"],
            401,
            "unauthorized",
            "UTF-8",
            id="not-utf8",
        ),
        pytest.param([HUBD_V1, BEARER], 401, "unauthorized", "base64url", id="empty"),
    ],
)
async def test_bad_subprotocol_credentials_are_refused_before_the_upgrade(
    hub_server: SessionHubd, offer: list[str], status: int, code: str, says: str
) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with ws_connect(
            hub_server.port, client_ip(), subscribe_path("pdfm"), subprotocols=offer
        ):
            pass
    error = rejection_error(info.value, status)
    assert error["error"] == code, error
    assert says in error["message"], error


async def test_the_first_credential_presented_decides(hub_server: SessionHubd) -> None:
    """The order is the documented one: Authorization, X-Api-Key, the subprotocol,
    ?access_token. A valid header with a bad subprotocol credential is accepted; a bad
    header with a valid subprotocol credential is refused."""
    async with ws_connect(
        hub_server.port,
        client_ip(),
        subscribe_path("pdfm"),
        SUB,
        subprotocols=offer_token("not-a-token"),
    ) as ws:
        assert ws.subprotocol == HUBD_V1
    with pytest.raises(ConnectionRejected) as info:
        async with ws_connect(
            hub_server.port,
            client_ip(),
            subscribe_path("pdfm"),
            {"Authorization": "Bearer not-a-token"},
            subprotocols=offer_token(SUB_TOKEN),
        ):
            pass
    assert rejection_error(info.value, 401)["error"] == "unauthorized"


async def test_origin_is_checked_for_subprotocol_credentials_too(hub_server: SessionHubd) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with ws_connect(
            hub_server.port,
            client_ip(),
            subscribe_path("pdfm"),
            {"Origin": "https://evil.example"},
            subprotocols=offer_token(SUB_TOKEN),
        ):
            pass
    assert rejection_error(info.value, 403)["error"] == "forbidden_origin"


async def test_the_secret_is_not_logged(start_hubd: StartHubd) -> None:
    server = await start_hubd()
    secret = "wrong-token-3f9c1d7e"
    ip = client_ip()
    with pytest.raises(ConnectionRejected):
        async with ws_connect(
            server.port, ip, subscribe_path("pdfm"), subprotocols=offer_token(secret)
        ):
            pass
    line = await server.wait_for_line(re.compile(rf"\brejected\b.*ip={re.escape(ip)}\b"))
    assert "unauthorized" in line.string
    assert secret not in server.output and encode(secret) not in server.output
