"""What a real WebSocket client on a real Hypercorn sees: the confirmation first even while
events stream out, the frame size limit (1009, both hubd's and the WebSocket layer's under
it) and the idle deadline (4408) in real time. The rules for frames (confirmation, ping,
client-id, error events, the limit, the idle deadline on a virtual clock) are in
tests/web/test_frames.py."""

from __future__ import annotations

import json

import pytest
import trio

from ..helpers import ADMIN, CONFIRMATION_MESSAGE, MAX_MESSAGE_BYTES, PING, SUB, event, padded_ping
from .conftest import IDLE_TIMEOUT
from .helpers import WAIT, SessionHubd, client_ip, http_client, subscribe, ws_connect

pytestmark = pytest.mark.e2e


async def test_confirmation_comes_before_any_event(hub_server: SessionHubd) -> None:
    """Clients connecting while global events stream out still see the confirmation first."""
    done = trio.Event()
    published = 0

    async def stream_events() -> None:
        nonlocal published
        async with http_client(hub_server.url) as http:
            while not done.is_set():
                response = await http.post(
                    "/v1/events", json=event("global", "TICK"), headers=ADMIN
                )
                assert response.status_code == 202
                published += 1

    with trio.fail_after(WAIT * 3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_events)
            for _ in range(10):
                ip = client_ip()
                async with ws_connect(hub_server.port, ip, "/v1/ws/subscribe", SUB) as ws:
                    first = json.loads(await ws.get_message())
                    assert first["message"] == CONFIRMATION_MESSAGE, first
                    # Events published from now on arrive after it.
                    second = json.loads(await ws.get_message())
                    assert second["message"] == "TICK", second
            done.set()
    assert published > 0


# -- frame size limit ----------------------------------------------------------------------


async def test_frame_of_exactly_max_message_bytes_is_accepted(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "health") as client:
        frame = padded_ping(MAX_MESSAGE_BYTES)
        pong = await client.request(frame)
        assert pong["message"] == "pong"
        assert pong["ref_id"] == json.loads(frame)["id"]
        reply = await client.request({**PING, "id": "still-there"})
        assert reply["ref_id"] == "still-there", reply


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(padded_ping(MAX_MESSAGE_BYTES + 1), id="one-byte-over"),
        pytest.param("x" * (MAX_MESSAGE_BYTES * 3), id="far-over"),
        # Under the limit in characters, over it in UTF-8 bytes.
        pytest.param(padded_ping(MAX_MESSAGE_BYTES + 10, "é"), id="multibyte-over"),
        pytest.param(b"\x00" * (MAX_MESSAGE_BYTES + 1), id="binary-over"),
    ],
)
async def test_frame_over_max_message_bytes_closes_1009(
    hub_server: SessionHubd, frame: str | bytes
) -> None:
    async with subscribe(hub_server.port, "health") as client:
        await client.send(frame)
        reason = await client.closed()
        assert reason.code == 1009, reason


# -- idle deadline -------------------------------------------------------------------------


async def test_idle_connection_is_closed_4408(idle_server: SessionHubd) -> None:
    ip = client_ip()
    async with subscribe(idle_server.port, "health", ip=ip) as client:
        reason = await client.closed(within=IDLE_TIMEOUT + 10)
        assert (reason.code, reason.reason) == (4408, "idle timeout")
    # The slot is free at once.
    async with subscribe(idle_server.port, "health", ip=ip) as again:
        assert again.client_id != client.client_id
