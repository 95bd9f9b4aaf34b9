"""The subscribe handshake where real sockets and addresses matter: the one-connection-
per-IP slot (409 from the same source address, released as soon as a real connection ends:
client close, server close, an abrupt disconnect) and every listen address served. The
handshake's rules (credentials, channels, every refusal, max_connections, trusted proxies,
Origin) are in tests/web/test_subscribe_handshake.py."""

from __future__ import annotations

import re

import pytest
import trio

from ..helpers import MAX_MESSAGE_BYTES, PUB, SUB, SUB_KEY, event
from .conftest import StartHubd
from .helpers import (
    WAIT,
    SessionHubd,
    client_ip,
    http_client,
    raw_connect,
    rejected,
    rejection_error,
    subscribe,
)

pytestmark = pytest.mark.e2e


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


async def test_slot_released_after_abrupt_disconnect(hub_server: SessionHubd) -> None:
    """A client that drops the TCP connection without a close frame frees its slot as
    soon as the server notices."""
    server = hub_server
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
