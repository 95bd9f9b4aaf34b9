"""The subscribe handshake in process: accepted credentials, every refusal before the
upgrade (a JSON answer instead of the 101), the one-connection-per-IP slot, max_connections,
trusted proxies, Origin, `?batch=`, and the subscribe path over plain HTTP.
tests/e2e/test_subscribe_handshake.py keeps what needs real sockets and addresses (the 409
from one source address, slots released as real connections end, listen addresses)."""

from __future__ import annotations

import httpx
import pytest

from ..helpers import (
    ADMIN,
    EXTRA_CHANNEL,
    PUB,
    PUB_TOKEN,
    SUB,
    SUB_KEY,
    SUB_PDFM,
    assert_json_error,
    bearer,
    subscribe_path,
)
from .asgi import InProcessHubd, client_ip
from .conftest import MakeHubd

BUILTIN = ["global", "pdfm", "orchestrator", "health", "system"]
PROXY = "10.77.0.1"  # inside the trusted proxy range of the `hubd` fixture
PROXY2 = "10.77.0.2"


# -- credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
@pytest.mark.parametrize(
    ("headers", "access_token"),
    [
        pytest.param(SUB, None, id="authorization-bearer"),
        pytest.param({"Authorization": "bearer sub-token"}, None, id="bearer-lowercase"),
        pytest.param(SUB_KEY, None, id="x-api-key"),
        pytest.param({}, "sub-token", id="access_token-query"),
        pytest.param(bearer("hashed-token"), None, id="token_sha256"),
        pytest.param(ADMIN, None, id="admin-may-subscribe"),
    ],
)
async def test_accepted_credentials(
    hubd: InProcessHubd, prefix: str, headers: dict[str, str], access_token: str | None
) -> None:
    async with hubd.subscribe("pdfm", headers, prefix=prefix, access_token=access_token) as sub:
        assert sub.subscriptions == ["pdfm", "global"]
        assert sub.ws.accepted


@pytest.mark.parametrize(
    ("headers", "access_token"),
    [
        pytest.param({}, None, id="none"),
        pytest.param(bearer("not-a-token"), None, id="unknown-bearer"),
        pytest.param({"Authorization": "Basic c3ViOnN1Yi10b2tlbg=="}, None, id="basic-scheme"),
        pytest.param({"Authorization": "Token sub-token"}, None, id="other-scheme-valid-secret"),
        pytest.param({"Authorization": "Bearer"}, None, id="bearer-without-token"),
        pytest.param({"X-Api-Key": "not-a-key"}, None, id="unknown-api-key"),
        pytest.param({"X-Api-Key": "sub-token"}, None, id="token-sent-as-api-key"),
        pytest.param({}, "not-a-token", id="unknown-access_token"),
    ],
)
async def test_401_missing_unknown_or_wrong_scheme(
    hubd: InProcessHubd, headers: dict[str, str], access_token: str | None
) -> None:
    rejection = await hubd.rejected(subscribe_path("pdfm", access_token=access_token), headers)
    assert rejection.error(401)["error"] == "unauthorized"
    assert hubd.hub.rejected[401] == 1


async def test_401_does_not_echo_the_secret(hubd: InProcessHubd) -> None:
    rejection = await hubd.rejected(subscribe_path("pdfm"), bearer("super-secret-guess"))
    assert "super-secret-guess" not in rejection.error(401)["message"]


# -- authorization and channels ------------------------------------------------------------


@pytest.mark.parametrize("headers", [PUB_TOKEN, PUB], ids=["publisher-token", "publisher-key"])
async def test_403_without_subscriber_role(hubd: InProcessHubd, headers: dict[str, str]) -> None:
    error = (await hubd.rejected(subscribe_path("pdfm"), headers)).error(403)
    assert error["error"] == "forbidden" and "subscriber" in error["message"]


async def test_403_channel_outside_allow_list(hubd: InProcessHubd) -> None:
    error = (await hubd.rejected(subscribe_path("pdfm,orchestrator"), SUB_PDFM)).error(403)
    assert error["error"] == "forbidden" and "orchestrator" in error["message"]


async def test_allow_listed_principal_gets_its_channels_and_global(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("health,pdfm,global", SUB_PDFM) as sub:
        assert sub.subscriptions == ["health", "pdfm", "global"]
    async with hubd.subscribe(None, SUB_PDFM) as sub:
        assert sub.subscriptions == ["global"]


async def test_400_unknown_channel_lists_valid_ones(hubd: InProcessHubd) -> None:
    error = (await hubd.rejected(subscribe_path("pdfm,nosuchchannel"), SUB)).error(400)
    assert error["error"] == "unknown_channel"
    assert "nosuchchannel" in error["message"]
    for channel in [*BUILTIN, EXTRA_CHANNEL]:
        assert channel in error["message"]


async def test_extra_channel_from_config_is_subscribable(hubd: InProcessHubd) -> None:
    async with hubd.subscribe(EXTRA_CHANNEL) as sub:
        assert sub.subscriptions == [EXTRA_CHANNEL, "global"]


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
@pytest.mark.parametrize("value", ["1", "true"])
async def test_batch_confirmation_says_batch_true(
    hubd: InProcessHubd, prefix: str, value: str
) -> None:
    async with hubd.subscribe("pdfm", prefix=prefix, query={"batch": value}) as sub:
        assert sub.confirmation["body"] == {
            "client_id": sub.client_id,
            "subscriptions": ["pdfm", "global"],
            "batch": True,
        }


@pytest.mark.parametrize("value", [None, "0", "false"], ids=["absent", "0", "false"])
async def test_default_confirmation_has_no_batch_key(
    hubd: InProcessHubd, value: str | None
) -> None:
    query = None if value is None else {"batch": value}
    async with hubd.subscribe("pdfm", query=query) as sub:
        assert list(sub.confirmation["body"]) == ["client_id", "subscriptions"]


@pytest.mark.parametrize("value", ["maybe", "2", "on"])
async def test_400_bad_batch_value_names_it(hubd: InProcessHubd, value: str) -> None:
    path = subscribe_path("pdfm", query={"batch": value})
    error = (await hubd.rejected(path, SUB)).error(400)
    assert error["error"] == "bad_request"
    assert f"batch='{value}'" in error["message"]


@pytest.mark.parametrize(
    "path",
    ["/v1/ws/nope", "/v2/ws/subscribe", "/ws/subscribe", "/v1/events", "/api/v1/ws/unsubscribe"],
)
async def test_404_unknown_websocket_path(hubd: InProcessHubd, path: str) -> None:
    error = (await hubd.rejected(path, SUB)).error(404)
    assert error["error"] == "not_found" and path in error["message"]


# -- one connection per client IP ----------------------------------------------------------


async def test_409_second_connection_from_same_ip(hubd: InProcessHubd) -> None:
    ip = client_ip()
    async with hubd.subscribe("pdfm", ip=ip):
        error = (await hubd.rejected(subscribe_path("pdfm"), SUB, ip=ip)).error(409)
        assert error["error"] == "ip_in_use"
        # Another principal from the same IP is refused just the same.
        assert (await hubd.rejected(subscribe_path(), SUB_KEY, ip=ip)).error(409)
        async with hubd.subscribe("pdfm"):  # another IP is unaffected
            pass
    async with hubd.subscribe("pdfm", ip=ip):  # the slot is free once the client left
        pass


async def test_rejected_handshake_does_not_take_the_slot(hubd: InProcessHubd) -> None:
    ip = client_ip()
    (await hubd.rejected(subscribe_path("pdfm"), bearer("nope"), ip=ip)).error(401)
    (await hubd.rejected(subscribe_path("nosuch"), SUB, ip=ip)).error(400)
    (await hubd.rejected(subscribe_path("orchestrator"), SUB_PDFM, ip=ip)).error(403)
    bad_batch = subscribe_path("pdfm", query={"batch": "maybe"})
    error = (await hubd.rejected(bad_batch, SUB, ip=ip)).error(400)
    assert error["error"] == "bad_request" and "batch='maybe'" in error["message"]
    async with hubd.subscribe("pdfm", ip=ip):
        pass
    assert dict(hubd.hub.rejected) == {401: 1, 400: 2, 403: 1}


async def test_slot_released_after_server_close(hubd: InProcessHubd) -> None:
    ip = client_ip()
    async with hubd.subscribe("pdfm", ip=ip) as sub:
        await sub.send("x" * 5000)
        assert (await sub.closed()).code == 1009
    async with hubd.subscribe("pdfm", ip=ip):
        pass


async def test_one_connection_per_ip_can_be_turned_off(make_hubd: MakeHubd) -> None:
    hubd = make_hubd(limits={"one_connection_per_ip": False})
    ip = client_ip()
    async with hubd.subscribe("pdfm", ip=ip) as a, hubd.subscribe("pdfm", ip=ip) as b:
        assert a.client_id != b.client_id


async def test_503_at_max_connections(make_hubd: MakeHubd) -> None:
    hubd = make_hubd(limits={"max_connections": 2})
    async with hubd.subscribe("pdfm"), hubd.subscribe("pdfm"):
        for headers in (SUB, ADMIN):
            error = (await hubd.rejected(subscribe_path("pdfm"), headers)).error(503)
            assert error["error"] == "at_capacity"
    async with hubd.subscribe("pdfm"), hubd.subscribe("pdfm"):
        pass


async def test_503_while_draining(hubd: InProcessHubd) -> None:
    hubd.hub.draining = True
    error = (await hubd.rejected(subscribe_path("pdfm"), SUB)).error(503)
    assert error["error"] == "draining"


# -- client IP behind trusted proxies ------------------------------------------------------


async def test_trusted_proxy_x_forwarded_for_distinguishes_clients(hubd: InProcessHubd) -> None:
    def via(client: str) -> dict[str, str]:
        return {**SUB, "X-Forwarded-For": client}

    async with (
        hubd.subscribe("pdfm", via("203.0.113.1"), ip=PROXY) as a,
        hubd.subscribe("pdfm", via("203.0.113.2"), ip=PROXY),
    ):
        body = (await _clients(hubd))["clients"]
        assert {c["ip"] for c in body} == {"203.0.113.1", "203.0.113.2"}
        assert a.client_id in {c["client_id"] for c in body}
        # The same forwarded client, through the same or another trusted proxy: 409.
        for proxy in (PROXY, PROXY2):
            rejection = await hubd.rejected(subscribe_path("pdfm"), via("203.0.113.1"), ip=proxy)
            assert rejection.error(409)["error"] == "ip_in_use"


async def test_trusted_proxy_uses_right_most_untrusted_hop(hubd: InProcessHubd) -> None:
    chain = f"198.51.100.1, 203.0.113.10, {PROXY2}"
    async with hubd.subscribe("pdfm", {**SUB, "X-Forwarded-For": chain}, ip=PROXY):
        ((view,),) = [(await _clients(hubd))["clients"]]
        assert view["ip"] == "203.0.113.10"


async def test_trusted_proxy_x_real_ip_is_ignored_while_the_header_is_x_forwarded_for(
    hubd: InProcessHubd,
) -> None:
    """limits.client_ip_header names one header (x-forwarded-for here): a proxy's X-Real-IP
    is not read, so both connections count as the proxy itself."""
    async with hubd.subscribe("pdfm", {**SUB, "X-Real-IP": "203.0.113.70"}, ip=PROXY):
        rejection = await hubd.rejected(
            subscribe_path("pdfm"), {**SUB, "X-Real-IP": "203.0.113.71"}, ip=PROXY
        )
        assert f"client IP {PROXY} " in rejection.error(409)["message"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"X-Forwarded-For": PROXY2}, id="only-trusted-hops"),
        pytest.param(
            {"X-Forwarded-For": f"{PROXY2}, 10.77.0.3", "X-Real-IP": "203.0.113.60"},
            id="only-trusted-hops-and-x-real-ip",
        ),
    ],
)
async def test_trusted_proxy_without_a_client_hop_counts_as_itself(
    hubd: InProcessHubd, headers: dict[str, str]
) -> None:
    async with hubd.subscribe("pdfm", {**SUB, **headers}, ip=PROXY):
        ((view,),) = [(await _clients(hubd))["clients"]]
        assert view["ip"] == PROXY
        (await hubd.rejected(subscribe_path("pdfm"), SUB, ip=PROXY)).error(409)
        # A client named by the proxy is another client.
        async with hubd.subscribe("pdfm", {**SUB, "X-Forwarded-For": "203.0.113.30"}, ip=PROXY):
            pass


@pytest.mark.parametrize(
    "spoof",
    [
        pytest.param({"X-Forwarded-For": "203.0.113.40"}, id="x-forwarded-for"),
        pytest.param({"X-Forwarded-For": "203.0.113.41, 203.0.113.42"}, id="xff-chain"),
        pytest.param({"X-Real-IP": "203.0.113.43"}, id="x-real-ip"),
    ],
)
async def test_untrusted_peer_cannot_dodge_409_with_headers(
    hubd: InProcessHubd, spoof: dict[str, str]
) -> None:
    ip = client_ip()
    async with hubd.subscribe("pdfm", {**SUB, "X-Forwarded-For": "203.0.113.39"}, ip=ip) as sub:
        assert (await _clients(hubd))["clients"][0]["ip"] == sub.ip
        (await hubd.rejected(subscribe_path("pdfm"), {**SUB, **spoof}, ip=ip)).error(409)


async def _clients(hubd: InProcessHubd) -> dict[str, list[dict[str, str]]]:
    async with hubd.http() as http:
        response = await http.get("/v1/ws/clients", headers=ADMIN)
        assert response.status_code == 200
        body: dict[str, list[dict[str, str]]] = response.json()
        return body


# -- Origin --------------------------------------------------------------------------------


OPS = "https://ops.example.com"
SAME = "http://hubd.test:80"  # the origin of a page served by the `hubd` fixture


@pytest.mark.parametrize(
    ("allowed", "origin", "refused_saying"),
    [
        # Without a list: clients sending no Origin, and same-origin pages only.
        pytest.param([], None, None, id="default-no-origin"),
        pytest.param([], SAME, None, id="default-same-origin"),
        pytest.param([], "https://evil.example", "same-origin", id="default-other-site"),
        pytest.param([], "http://hubd.test:81", "same-origin", id="default-other-port"),
        pytest.param([], "http://localhost", "same-origin", id="default-other-host"),
        pytest.param([], "null", "same-origin", id="default-opaque"),
        # With a list: those origins only (compared case-insensitively, without a final /).
        pytest.param([OPS], None, None, id="listed-no-origin"),
        pytest.param([OPS], OPS, None, id="listed"),
        pytest.param([OPS], "HTTPS://OPS.example.com/", None, id="listed-case-and-slash"),
        pytest.param([OPS], "https://evil.example", OPS, id="not-listed"),
        pytest.param([OPS], SAME, OPS, id="same-origin-not-listed"),
        pytest.param([OPS], "http://ops.example.com", OPS, id="listed-other-scheme"),
        pytest.param([OPS], "https://ops.example.com:8443", OPS, id="listed-other-port"),
        # "*": any origin at all.
        pytest.param(["*"], "https://evil.example", None, id="star"),
        pytest.param(["*"], "null", None, id="star-opaque"),
        pytest.param(["*"], SAME, None, id="star-same-origin"),
        pytest.param(["*"], None, None, id="star-no-origin"),
    ],
)
async def test_origin(
    make_hubd: MakeHubd, allowed: list[str], origin: str | None, refused_saying: str | None
) -> None:
    hubd = make_hubd(server={"allowed_origins": allowed})
    headers = SUB if origin is None else {**SUB, "Origin": origin}
    if refused_saying is None:
        async with hubd.subscribe("pdfm", headers) as sub:
            assert sub.subscriptions == ["pdfm", "global"]
    else:
        assert origin is not None
        error = (await hubd.rejected(subscribe_path("pdfm"), headers)).error(403)
        assert error["error"] == "forbidden_origin" and origin in error["message"]
        assert refused_saying in error["message"]


# -- plain HTTP on the subscribe path ------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_426_subscribe_over_plain_http(http: httpx.AsyncClient, prefix: str) -> None:
    response = await http.get(f"{prefix}/ws/subscribe?event_types=pdfm", headers=SUB)
    error = assert_json_error(response, 426)
    assert error["error"] == "upgrade_required"
    assert "WebSocket" in error["message"]
