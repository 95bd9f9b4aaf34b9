"""The close race on a real daemon: subscribers going away while events are published or
while the server drains must never surface as a 500 for a publish (whose event was
delivered) or as a crashed drain (exit status 1). The deterministic reproduction is in
tests/unit/test_close_race.py; these check that the whole stack keeps the promise under
real scheduling, a bounded number of times."""

from __future__ import annotations

import re
import socket
import struct

import httpx
import pytest
import trio

from ..helpers import HOST, PUB, event
from .conftest import StartHubd
from .helpers import WAIT, client_ip, http_client, raw_connect

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT = 3.0
CLIENTS = 30
# A client-initiated WebSocket close (code 1000), masked with an all-zero key.
CLOSE_FRAME = b"\x88\x82\x00\x00\x00\x00\x03\xe8"
CRASH = re.compile(r"Traceback|Nursery is closed|ExceptionGroup")


async def open_subscriber(port: int, channels: str = "pdfm") -> trio.SocketStream:
    """A raw WebSocket subscriber (from a fresh source address) whose session is being
    served: its 101 and the first bytes of its confirmation frame have arrived."""
    stream = await raw_connect(port, client_ip())
    await stream.send_all(
        f"GET /v1/ws/subscribe?event_types={channels} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Authorization: Bearer sub-token\r\n\r\n".encode()
    )
    data = b""
    with trio.fail_after(WAIT):
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 2:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed during the handshake: {data!r}"
            data += chunk
    assert data.startswith(b"HTTP/1.1 101"), data
    return stream


async def go_away(stream: trio.SocketStream, how: int) -> None:
    """End a subscriber in one of three ways: a close frame then FIN, a bare FIN, or a
    TCP reset (each reaches the server's session by a different path)."""
    try:
        if how == 0:
            await stream.send_all(CLOSE_FRAME)
        elif how == 2:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (trio.BrokenResourceError, OSError):
        pass  # already gone: as good as closed
    await stream.aclose()


async def open_all(port: int, n: int) -> list[trio.SocketStream]:
    streams: list[trio.SocketStream] = []

    async def one() -> None:
        streams.append(await open_subscriber(port))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return streams


async def close_all_at_once(streams: list[trio.SocketStream]) -> None:
    async with trio.open_nursery() as nursery:
        for i, stream in enumerate(streams):
            nursery.start_soon(go_away, stream, i % 3)


async def test_publishes_answer_202_while_subscribers_disconnect(start_hubd: StartHubd) -> None:
    server = await start_hubd(server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    statuses: list[int] = []
    stop = trio.Event()
    answered = trio.Event()  # set (and replaced) on every answer

    async def publisher() -> None:
        nonlocal answered
        async with http_client(server.url) as http:
            while not stop.is_set():
                response = await http.post("/v1/events", json=event(), headers=PUB)
                statuses.append(response.status_code)
                answered.set()
                answered = trio.Event()
                assert response.status_code == 202, response.text

    async def publishes_answered(n: int) -> None:
        while len(statuses) < n:
            await answered.wait()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(publisher)
            for round_ in range(4):  # rounds of subscribers that all leave together
                streams = await open_all(server.port, CLIENTS)
                # Some publishes reach them first, then they leave while more go out.
                await publishes_answered(6 * (round_ + 1))
                await close_all_at_once(streams)
            stop.set()
    assert len(statuses) > 20, "the publishers hardly ran"
    assert set(statuses) == {202}
    async with http_client(server.url) as http:  # still healthy
        response: httpx.Response = await http.post("/v1/events", json=event(), headers=PUB)
        assert response.status_code == 202
    assert not CRASH.search(server.output), server.output


@pytest.mark.parametrize("attempt", range(5))
async def test_sigterm_while_clients_close_exits_0(start_hubd: StartHubd, attempt: int) -> None:
    server = await start_hubd(server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    streams = await open_all(server.port, CLIENTS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_all_at_once, streams[: CLIENTS // 2])
        # Drain while the first half is leaving; the second half leaves during the drain.
        await trio.sleep(attempt * 0.001)
        server.terminate()
        nursery.start_soon(close_all_at_once, streams[CLIENTS // 2 :])
    assert await server.wait_exit(SHUTDOWN_TIMEOUT + 5) == 0, server.output
    await server.wait_eof()
    assert not CRASH.search(server.output), server.output
