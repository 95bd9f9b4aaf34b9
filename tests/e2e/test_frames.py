"""What a connected subscriber sees: the confirmation frame, ping/pong, client-id, error
events for bad frames, the frame size limit (1009) and the idle deadline (4408)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from .conftest import IDLE_TIMEOUT, MAX_MESSAGE_BYTES
from .helpers import (
    ADMIN,
    CONFIRMATION_MESSAGE,
    HEX64,
    SUB,
    TIMESTAMP,
    WAIT,
    SessionHubd,
    Subscriber,
    assert_uuid4,
    client_ip,
    event,
    http_client,
    subscribe,
    ws_connect,
)

pytestmark = pytest.mark.e2e

PING = {"event_type": "health", "message": "ping"}
CLIENT_ID = {"event_type": "system", "message": "client-id"}


def assert_timestamp(value: Any) -> None:
    assert isinstance(value, str) and TIMESTAMP.match(value), value
    parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert parsed.year >= 2024


def assert_error_event(event: dict[str, Any], client: Subscriber, *mentions: str) -> str:
    """A `global` error event whose body says what was wrong."""
    assert event["event_type"] == "global", event
    assert event["message"] == "error", event
    assert HEX64.match(event["id"]), event
    assert_timestamp(event["timestamp"])
    assert list(event["body"]) == ["error"], event
    text = event["body"]["error"]
    assert isinstance(text, str) and text, event
    for word in mentions:
        assert word in text, (word, text)
    if "client_id" in event:
        assert event["client_id"] == client.client_id
    return text


async def assert_usable(client: Subscriber) -> None:
    """The connection still answers (with a pong or, without `health`, an error)."""
    reply = await client.request({**PING, "id": "still-there"})
    assert reply["ref_id"] == "still-there", reply


# -- confirmation --------------------------------------------------------------------------


async def test_confirmation_frame_is_exact(hub_server: SessionHubd) -> None:
    requested = " PDFM, health ,Orchestrator,pdfm,,HEALTH ,global"
    async with subscribe(hub_server.port, requested) as client:
        frame = client.confirmation
        assert list(frame) == ["id", "event_type", "timestamp", "message", "body"]
        assert HEX64.match(frame["id"]), frame["id"]
        assert frame["event_type"] == "global"
        assert_timestamp(frame["timestamp"])
        assert frame["message"] == CONFIRMATION_MESSAGE
        assert list(frame["body"]) == ["client_id", "subscriptions"]
        assert_uuid4(frame["body"]["client_id"])
        assert frame["body"]["subscriptions"] == ["pdfm", "health", "orchestrator", "global"]


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        pytest.param(None, ["global"], id="missing"),
        pytest.param("", ["global"], id="empty"),
        pytest.param(" , ,", ["global"], id="blank-items"),
        pytest.param("GLOBAL", ["global"], id="global-only"),
        pytest.param("system,System, SYSTEM ", ["system", "global"], id="dedup-case-trim"),
        pytest.param("global,health", ["health", "global"], id="global-moves-last"),
    ],
)
async def test_event_types_normalisation(
    hub_server: SessionHubd, requested: str | None, expected: list[str]
) -> None:
    async with subscribe(hub_server.port, requested) as client:
        assert client.subscriptions == expected


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


async def test_each_connection_gets_its_own_ids(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "pdfm") as a, subscribe(hub_server.port, "pdfm") as b:
        assert a.client_id != b.client_id
        assert a.confirmation["id"] != b.confirmation["id"]


# -- ping / pong ---------------------------------------------------------------------------


async def test_ping_with_health_gets_exact_pong(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "health") as client:
        pong = await client.request({**PING, "id": "abc"})
        assert list(pong) == ["id", "ref_id", "event_type", "timestamp", "message", "client_id"]
        assert HEX64.match(pong["id"])
        assert pong["ref_id"] == "abc"
        assert pong["event_type"] == "health"
        assert_timestamp(pong["timestamp"])
        assert pong["message"] == "pong"
        assert pong["client_id"] == client.client_id


async def test_ping_without_id_gets_fresh_ref_id(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "pdfm,health") as client:
        first = await client.request(PING)
        second = await client.request(PING)
        for pong in (first, second):
            assert pong["message"] == "pong"
            assert HEX64.match(pong["ref_id"]), pong
            assert pong["ref_id"] != pong["id"]
        assert first["ref_id"] != second["ref_id"]
        assert first["id"] != second["id"]


async def test_ping_without_health_gets_global_error(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        reply = await client.request({**PING, "id": "p1"})
        assert_error_event(reply, client, "event_types=health")
        # Still connected and answering.
        reply = await client.request({**PING, "id": "p2"})
        assert_error_event(reply, client, "health")


# -- client-id -----------------------------------------------------------------------------


async def test_client_id_with_system(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "system") as client:
        reply = await client.request({**CLIENT_ID, "id": "who"})
        assert reply["event_type"] == "system"
        assert reply["message"] == "client-id"
        assert reply["ref_id"] == "who"
        assert reply["client_id"] == client.client_id
        assert reply["body"] == {"client-id": client.client_id}
        assert HEX64.match(reply["id"])
        assert_timestamp(reply["timestamp"])
        assert set(reply) == {"id", "ref_id", "event_type", "timestamp", "message", "body",
                              "client_id"}  # fmt: skip


async def test_client_id_without_system_gets_global_error(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "health") as client:
        reply = await client.request(CLIENT_ID)
        assert_error_event(reply, client, "system")
        await assert_usable(client)


# -- bad frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("this is not json", id="not-json"),
        pytest.param("{", id="truncated-json"),
        pytest.param("[1, 2, 3]", id="array"),
        pytest.param('"ping"', id="string"),
        pytest.param("42", id="number"),
        pytest.param("null", id="null"),
        pytest.param('{"event_type": "pdfm", "message": "ping"}', id="unknown-event_type-pdfm"),
        pytest.param('{"event_type": "nosuch", "message": "ping"}', id="unknown-event_type"),
        pytest.param('{"event_type": "health", "message": "pang"}', id="unknown-health-message"),
        pytest.param('{"event_type": "system", "message": "who"}', id="unknown-system-message"),
        pytest.param('{"message": "ping"}', id="missing-event_type"),
        pytest.param('{"event_type": "health"}', id="missing-message"),
        pytest.param('{"event_type": 1, "message": "ping"}', id="event_type-not-string"),
        pytest.param(b"\x00\x01binary", id="binary-frame"),
    ],
)
async def test_bad_frame_gets_error_event_and_connection_stays(
    hub_server: SessionHubd, frame: str | bytes
) -> None:
    async with subscribe(hub_server.port, "health,system") as client:
        reply = await client.request(frame)
        assert_error_event(reply, client)
        await assert_usable(client)
        reply = await client.request(CLIENT_ID)
        assert reply["body"] == {"client-id": client.client_id}


async def test_error_event_says_what_is_accepted(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "health") as client:
        text = assert_error_event(await client.request("nope"), client)
        assert "JSON" in text
        text = assert_error_event(
            await client.request({"event_type": "nosuch", "message": "x"}), client, "nosuch"
        )
        assert "ping" in text and "client-id" in text


# -- frame size limit ----------------------------------------------------------------------


def padded_ping(size: int, char: str = "x") -> str:
    """A ping frame of exactly `size` UTF-8 bytes (padding in the id)."""
    empty = json.dumps({**PING, "id": ""}, separators=(",", ":"))
    room = size - len(empty.encode())
    per_char = len(char.encode())
    assert room % per_char == 0
    frame = json.dumps({**PING, "id": char * (room // per_char)}, separators=(",", ":"),
                       ensure_ascii=False)  # fmt: skip
    assert len(frame.encode()) == size
    return frame


async def test_frame_of_exactly_max_message_bytes_is_accepted(hub_server: SessionHubd) -> None:
    async with subscribe(hub_server.port, "health") as client:
        frame = padded_ping(MAX_MESSAGE_BYTES)
        pong = await client.request(frame)
        assert pong["message"] == "pong"
        assert pong["ref_id"] == json.loads(frame)["id"]
        await assert_usable(client)


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


async def keep_talking(client: Subscriber, frame: dict[str, str], deadlines: int = 3) -> None:
    """Send `frame` back to back (each after the previous reply) for several idle deadlines."""
    start = trio.current_time()
    replies = 0
    while trio.current_time() - start < deadlines * IDLE_TIMEOUT:
        await client.request(frame)
        replies += 1
    assert replies > deadlines


async def test_pinging_client_outlives_idle_deadline(idle_server: SessionHubd) -> None:
    async with subscribe(idle_server.port, "health") as client:
        await keep_talking(client, PING)
        pong = await client.request({**PING, "id": "alive"})
        assert (pong["message"], pong["ref_id"]) == ("pong", "alive")
        # Left alone, it is closed as idle after all.
        reason = await client.closed(within=IDLE_TIMEOUT + 10)
        assert reason.code == 4408


async def test_ping_without_health_still_counts_as_heartbeat(idle_server: SessionHubd) -> None:
    async with subscribe(idle_server.port, "pdfm") as client:
        await keep_talking(client, PING)
        reply = await client.request({**PING, "id": "alive"})
        assert (reply["message"], reply["ref_id"]) == ("error", "alive")


async def test_any_client_frame_counts_as_heartbeat(idle_server: SessionHubd) -> None:
    async with subscribe(idle_server.port, "system", SUB) as client:
        await keep_talking(client, {"event_type": "nosuch", "message": "x"})
        reply = await client.request(CLIENT_ID)
        assert reply["body"] == {"client-id": client.client_id}
