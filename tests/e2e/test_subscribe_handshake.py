"""Subscribe handshake: credentials, every rejection before the upgrade, the per-IP slot,
max_connections, trusted proxies, both path prefixes."""

from __future__ import annotations

import re

import pytest
import trio

from .conftest import EXTRA_CHANNEL, MAX_MESSAGE_BYTES, StartHubd
from .helpers import (
    ADMIN,
    PUB,
    PUB_TOKEN,
    SUB,
    SUB_KEY,
    SUB_PDFM,
    WAIT,
    SessionHubd,
    bearer,
    client_ip,
    event,
    http_client,
    proxy_ip,
    raw_connect,
    rejected,
    rejection_error,
    subscribe,
)

pytestmark = pytest.mark.e2e

BUILTIN = ["global", "pdfm", "orchestrator", "health", "system"]


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
    hub_server: SessionHubd, prefix: str, headers: dict[str, str], access_token: str | None
) -> None:
    async with subscribe(
        hub_server.port, "pdfm", headers, prefix=prefix, access_token=access_token
    ) as sub:
        assert sub.subscriptions == ["pdfm", "global"]


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
    hub_server: SessionHubd, headers: dict[str, str], access_token: str | None
) -> None:
    exc = await rejected(hub_server.port, "pdfm", headers, access_token=access_token)
    rejection_error(exc, 401)


async def test_401_does_not_echo_the_secret(hub_server: SessionHubd) -> None:
    exc = await rejected(hub_server.port, "pdfm", bearer("super-secret-guess"))
    assert "super-secret-guess" not in rejection_error(exc, 401)["message"]


async def test_secrets_are_never_logged(start_hubd: StartHubd) -> None:
    server = await start_hubd(log={"level": "debug"})
    port = server.port
    for headers, token in [
        (bearer("leaky-bearer-secret"), None),
        ({"X-Api-Key": "leaky-key-secret"}, None),
        ({"Authorization": "Basic bGVha3ktYmFzaWMtc2VjcmV0"}, None),
        ({}, "leaky-query-secret"),
    ]:
        rejection_error(await rejected(port, "pdfm", headers, access_token=token), 401)
    async with (
        subscribe(port, "pdfm", {}, access_token="sub-token") as client,
        subscribe(port, "pdfm", bearer("hashed-token")),
        http_client(server.url) as http,
    ):
        assert (await http.post("/v1/events", json=event(), headers=PUB)).status_code == 202
        assert (await client.recv())["event_type"] == "pdfm"
        response = await http.post(
            "/v1/events?access_token=leaky-publish-secret", json=event(), headers={}
        )
        assert response.status_code == 401
        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
            headers=ADMIN,
        )
        assert response.status_code == 200
    server.terminate()
    assert await server.wait_exit(WAIT) == 0
    await server.wait_eof()
    assert server.lines
    for secret in [
        "leaky-bearer-secret",
        "leaky-key-secret",
        "bGVha3ktYmFzaWMtc2VjcmV0",
        "leaky-query-secret",
        "leaky-publish-secret",
        "sub-token",
        "hashed-token",
        "pub-key",
        "admin-token",
    ]:
        assert secret not in server.output, secret


# -- authorization and channels ------------------------------------------------------------


@pytest.mark.parametrize("headers", [PUB_TOKEN, PUB], ids=["publisher-token", "publisher-key"])
async def test_403_without_subscriber_role(
    hub_server: SessionHubd, headers: dict[str, str]
) -> None:
    exc = await rejected(hub_server.port, "pdfm", headers)
    assert "subscriber" in rejection_error(exc, 403)["message"]


async def test_403_channel_outside_allow_list(hub_server: SessionHubd) -> None:
    exc = await rejected(hub_server.port, "pdfm,orchestrator", SUB_PDFM)
    assert "orchestrator" in rejection_error(exc, 403)["message"]


async def test_allow_listed_principal_gets_its_channels_and_global(
    hub_server: SessionHubd,
) -> None:
    async with subscribe(hub_server.port, "health,pdfm,global", SUB_PDFM) as sub:
        assert sub.subscriptions == ["health", "pdfm", "global"]
    async with subscribe(hub_server.port, None, SUB_PDFM) as sub:
        assert sub.subscriptions == ["global"]


async def test_400_unknown_channel_lists_valid_ones(hub_server: SessionHubd) -> None:
    exc = await rejected(hub_server.port, "pdfm,nosuchchannel", SUB)
    message = rejection_error(exc, 400)["message"]
    assert "nosuchchannel" in message
    for channel in [*BUILTIN, EXTRA_CHANNEL]:
        assert channel in message


async def test_extra_channel_from_config_is_subscribable(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, EXTRA_CHANNEL) as sub:
        assert sub.subscriptions == [EXTRA_CHANNEL, "global"]


@pytest.mark.parametrize(
    "resource",
    ["/v1/ws/nope", "/v2/ws/subscribe", "/ws/subscribe", "/v1/events", "/api/v1/ws/unsubscribe"],
)
async def test_404_unknown_websocket_path(hub_server: SessionHubd, resource: str) -> None:
    exc = await rejected(hub_server.port, headers=SUB, resource=resource)
    rejection_error(exc, 404)


# -- one connection per client IP ----------------------------------------------------------


async def test_409_second_connection_from_same_ip(hub_server: SessionHubd) -> None:
    ip = client_ip()
    async with subscribe(hub_server.port, "pdfm", ip=ip):
        exc = await rejected(hub_server.port, "pdfm", SUB, ip=ip)
        rejection_error(exc, 409)
        # A different principal from the same IP is refused just the same.
        exc = await rejected(hub_server.port, None, SUB_KEY, ip=ip)
        rejection_error(exc, 409)
        # Another IP is unaffected.
        async with subscribe(hub_server.port, "pdfm"):
            pass


async def test_rejected_handshake_does_not_take_the_slot(hub_server: SessionHubd) -> None:
    ip = client_ip()
    rejection_error(await rejected(hub_server.port, "pdfm", bearer("nope"), ip=ip), 401)
    rejection_error(await rejected(hub_server.port, "nosuch", SUB, ip=ip), 400)
    rejection_error(await rejected(hub_server.port, "orchestrator", SUB_PDFM, ip=ip), 403)
    async with subscribe(hub_server.port, "pdfm", ip=ip):
        pass


async def test_slot_released_immediately_after_client_close(hub_server: SessionHubd) -> None:
    ip = client_ip()
    for _ in range(20):
        async with subscribe(hub_server.port, "pdfm", ip=ip) as sub:
            # Prove the connection is live before closing it.
            await sub.send({"event_type": "system", "message": "client-id"})
            await sub.recv()


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(MAX_MESSAGE_BYTES + 1, id="just-over"),
        # Far over: refused by the WebSocket layer under hubd rather than by hubd itself.
        pytest.param(MAX_MESSAGE_BYTES * 5, id="far-over"),
    ],
)
async def test_slot_released_immediately_after_server_close(
    hub_server: SessionHubd, size: int
) -> None:
    ip = client_ip()
    for _ in range(10):
        async with subscribe(hub_server.port, "pdfm", ip=ip) as sub:
            await sub.send("x" * size)
            assert (await sub.closed()).code == 1009
        async with subscribe(hub_server.port, "pdfm", ip=ip):
            pass


async def test_slot_released_after_abrupt_disconnect(start_hubd: StartHubd) -> None:
    """A client that drops the TCP connection without a close frame frees its slot as
    soon as the server notices."""
    server = await start_hubd()
    ip = client_ip()
    stream = await raw_connect(server.port, ip)
    async with stream:
        await stream.send_all(
            b"GET /v1/ws/subscribe?event_types=pdfm HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{server.port}\r\n".encode()
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer sub-token\r\n\r\n"
        )
        head = b""
        with trio.fail_after(WAIT):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        rejection_error(await rejected(server.port, "pdfm", SUB, ip=ip), 409)
    # Gone without a close frame; wait until the server has seen it end.
    await server.wait_for_line(re.compile(rf"closed client_id=\S+ ip={re.escape(ip)}\b"))
    async with subscribe(server.port, "pdfm", ip=ip):
        pass


async def test_one_connection_per_ip_can_be_turned_off(start_hubd: StartHubd) -> None:
    server = await start_hubd(limits={"one_connection_per_ip": False})
    ip = client_ip()
    async with (
        subscribe(server.port, "pdfm", ip=ip) as a,
        subscribe(server.port, "pdfm", ip=ip) as b,
    ):
        assert a.client_id != b.client_id


async def test_serves_every_listen_address(start_hubd: StartHubd) -> None:
    server = await start_hubd(server={"listen": ["127.0.0.1:0", "127.0.0.2:0"]})
    assert [host for host, _ in server.binds] == ["127.0.0.1", "127.0.0.2"]
    (_, first), (second_host, second) = server.binds
    async with (
        subscribe(first, "pdfm") as a,
        subscribe(second, "pdfm", host=second_host) as b,
        http_client(f"http://{second_host}:{second}") as http,
    ):
        response = await http.post("/v1/events", json=event(), headers=PUB)
        assert response.status_code == 202
        assert (await a.recv())["id"] == response.json()["id"]
        assert (await b.recv())["id"] == response.json()["id"]


async def test_serves_an_ipv6_listen_address(start_hubd: StartHubd) -> None:
    try:
        probe = trio.socket.socket(trio.socket.AF_INET6)
        await probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = await start_hubd(server={"listen": ["[::1]:0"]})
    ((host, port),) = server.binds
    assert host == "::1"
    async with (
        subscribe(port, "pdfm", ip="::1", host="::1") as client,
        http_client(f"http://[::1]:{port}", "::1") as http,
    ):
        rejection_error(await rejected(port, "pdfm", SUB, ip="::1", host="::1"), 409)
        response = await http.post("/v1/events", json=event(), headers=PUB)
        assert response.status_code == 202
        assert (await client.recv())["id"] == response.json()["id"]


# -- max_connections -----------------------------------------------------------------------


async def test_503_at_max_connections(start_hubd: StartHubd) -> None:
    server = await start_hubd(limits={"max_connections": 2})
    async with subscribe(server.port, "pdfm"), subscribe(server.port, "pdfm"):
        rejection_error(await rejected(server.port, "pdfm", SUB), 503)
        rejection_error(await rejected(server.port, None, ADMIN), 503)
    # Once they are gone there is room again.
    async with subscribe(server.port, "pdfm"), subscribe(server.port, "pdfm"):
        pass


# -- client IP behind trusted proxies ------------------------------------------------------


async def test_trusted_proxy_x_forwarded_for_distinguishes_clients(
    hub_server: SessionHubd,
) -> None:
    proxy = proxy_ip()
    port = hub_server.port
    async with (
        subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.1"}, ip=proxy),
        subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.2"}, ip=proxy),
    ):
        # The same forwarded client through the same proxy is the same client.
        exc = await rejected(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.1"}, ip=proxy)
        rejection_error(exc, 409)
        # ... and through another trusted proxy too.
        exc = await rejected(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.2"}, ip=proxy_ip())
        rejection_error(exc, 409)


async def test_trusted_proxy_uses_right_most_untrusted_hop(hub_server: SessionHubd) -> None:
    port = hub_server.port
    proxy = proxy_ip()
    chain = f"198.51.100.1, 203.0.113.10, {proxy_ip()}"
    async with subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": chain}, ip=proxy):
        # The client counts as 203.0.113.10 (the right-most hop that is not a proxy) ...
        exc = await rejected(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.10"}, ip=proxy)
        rejection_error(exc, 409)
        # ... not as the left-most (spoofable) entry.
        async with subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": "198.51.100.1"}, ip=proxy):
            pass


async def test_trusted_proxy_x_real_ip_is_ignored_unless_it_is_the_configured_header(
    hub_server: SessionHubd,
) -> None:
    """limits.client_ip_header names one header (x-forwarded-for here): a proxy's X-Real-IP
    is not read, so both requests count as the proxy itself."""
    port = hub_server.port
    proxy = proxy_ip()
    async with subscribe(port, "pdfm", {**SUB, "X-Real-IP": "203.0.113.20"}, ip=proxy):
        exc = await rejected(port, "pdfm", {**SUB, "X-Real-IP": "203.0.113.21"}, ip=proxy)
        rejection_error(exc, 409)


async def test_trusted_proxy_only_trusted_hops_is_the_peer_whatever_x_real_ip_says(
    hub_server: SessionHubd,
) -> None:
    port = hub_server.port
    proxy = proxy_ip()
    only_proxies = f"{proxy_ip()}, {proxy_ip()}"
    headers = {**SUB, "X-Forwarded-For": only_proxies, "X-Real-IP": "203.0.113.60"}
    async with subscribe(port, "pdfm", headers, ip=proxy):
        # Neither the hops listed nor X-Real-IP is taken for the client: it is the proxy.
        rejection_error(await rejected(port, "pdfm", SUB, ip=proxy), 409)


async def test_trusted_proxy_only_trusted_hops_and_no_x_real_ip_is_the_peer(
    hub_server: SessionHubd,
) -> None:
    port = hub_server.port
    proxy = proxy_ip()
    async with subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": proxy_ip()}, ip=proxy):
        rejection_error(await rejected(port, "pdfm", SUB, ip=proxy), 409)


async def test_trusted_proxy_without_headers_counts_as_itself(hub_server: SessionHubd) -> None:
    port = hub_server.port
    proxy = proxy_ip()
    async with subscribe(port, "pdfm", SUB, ip=proxy):
        rejection_error(await rejected(port, "pdfm", SUB, ip=proxy), 409)
        async with subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.30"}, ip=proxy):
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
    hub_server: SessionHubd, spoof: dict[str, str]
) -> None:
    port = hub_server.port
    ip = client_ip()
    async with subscribe(port, "pdfm", {**SUB, "X-Forwarded-For": "203.0.113.39"}, ip=ip):
        exc = await rejected(port, "pdfm", {**SUB, **spoof}, ip=ip)
        rejection_error(exc, 409)
