"""What a connected subscriber sees, in process: the confirmation frame, a subscribe +
publish + receive round trip, ping/pong, client-id, error events for bad frames (the
connection lives on), the frame size limit (1009) and the idle deadline (4408).
tests/e2e/test_frames.py keeps what needs real sockets and a real Hypercorn: the frame
limit, the idle close in real time, the confirmation racing a stream of events."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from hubd.web.seam.direct_write import hypercorn_stream

from ..helpers import (
    ADMIN,
    CONFIRMATION_MESSAGE,
    HEX64,
    MAX_MESSAGE_BYTES,
    PING,
    PUB,
    TIMESTAMP,
    assert_uuid4,
    event,
    padded_ping,
)
from .asgi import InProcessHubd, Subscriber
from .conftest import MakeHubd

CLIENT_ID = {"event_type": "system", "message": "client-id"}


def assert_error_event(frame: dict[str, Any], client: Subscriber, *mentions: str) -> str:
    """A `global` error event whose body says what was wrong."""
    assert frame["event_type"] == "global", frame
    assert frame["message"] == "error", frame
    assert HEX64.match(frame["id"]), frame
    assert TIMESTAMP.match(frame["timestamp"]), frame
    assert list(frame["body"]) == ["error"], frame
    text = frame["body"]["error"]
    assert isinstance(text, str) and text, frame
    for word in mentions:
        assert word in text, (word, text)
    if "client_id" in frame:
        assert frame["client_id"] == client.client_id
    return text


async def assert_usable(client: Subscriber) -> None:
    reply = await client.request({**PING, "id": "still-there"})
    assert reply["ref_id"] == "still-there", reply


# -- confirmation and a round trip ---------------------------------------------------------


async def test_confirmation_frame_is_exact(hubd: InProcessHubd) -> None:
    requested = " PDFM, health ,Orchestrator,pdfm,,HEALTH ,global"
    async with hubd.subscribe(requested) as client:
        frame = client.confirmation
        assert list(frame) == ["id", "event_type", "timestamp", "message", "body"]
        assert HEX64.match(frame["id"]), frame["id"]
        assert frame["event_type"] == "global"
        assert TIMESTAMP.match(frame["timestamp"])
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
    hubd: InProcessHubd, requested: str | None, expected: list[str]
) -> None:
    async with hubd.subscribe(requested) as client:
        assert client.subscriptions == expected


async def test_each_connection_gets_its_own_ids(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("pdfm") as a, hubd.subscribe("pdfm") as b:
        assert a.client_id != b.client_id
        assert a.confirmation["id"] != b.confirmation["id"]


async def test_round_trip_over_the_plain_asgi_transport(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm") as pdfm, hubd.subscribe() as global_only:
        # Not Hypercorn's send: the session writes through plain ASGI messages.
        assert hypercorn_stream(pdfm.ws.asgi_send) is None
        response = await http.post("/v1/events", json=event(body={"n": 1}), headers=PUB)
        assert response.status_code == 202, response.text
        got = await pdfm.recv()
        assert got["id"] == response.json()["id"]
        assert (got["event_type"], got["message"], got["body"]) == (
            "pdfm",
            "VM_STATE_CHANGED",
            {"n": 1},
        )
        marker = await http.post("/v1/events", json=event("global", "M"), headers=ADMIN)
        # The pdfm event never reached the global-only client: the marker comes first.
        assert (await global_only.recv())["id"] == marker.json()["id"]
        assert (await pdfm.recv())["id"] == marker.json()["id"]
        assert pdfm.pending() == [] and global_only.pending() == []


async def test_client_close_ends_the_session(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("pdfm") as client:
        assert len(hubd.hub.sessions) == 1
        await client.ws.close(1000)
        await client.ws.wait_app_done()
        assert hubd.hub.sessions == {}
        assert client.ws.server_closed is None  # nothing sent back after the client left


# -- ping / pong and client-id -------------------------------------------------------------


async def test_ping_with_health_gets_exact_pong(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("health") as client:
        pong = await client.request({**PING, "id": "abc"})
        assert list(pong) == ["id", "ref_id", "event_type", "timestamp", "message", "client_id"]
        assert HEX64.match(pong["id"])
        assert (pong["ref_id"], pong["event_type"], pong["message"]) == ("abc", "health", "pong")
        assert TIMESTAMP.match(pong["timestamp"])
        assert pong["client_id"] == client.client_id


async def test_ping_without_id_gets_fresh_ref_id(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("pdfm,health") as client:
        first = await client.request(PING)
        second = await client.request(PING)
        for pong in (first, second):
            assert pong["message"] == "pong"
            assert HEX64.match(pong["ref_id"]), pong
            assert pong["ref_id"] != pong["id"]
        assert first["ref_id"] != second["ref_id"]
        assert first["id"] != second["id"]


async def test_ping_without_health_gets_global_error(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("pdfm") as client:
        reply = await client.request({**PING, "id": "p1"})
        assert_error_event(reply, client, "event_types=health")
        assert reply["ref_id"] == "p1"
        assert_error_event(await client.request({**PING, "id": "p2"}), client, "health")


async def test_client_id_with_system(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("system") as client:
        reply = await client.request({**CLIENT_ID, "id": "who"})
        assert set(reply) == {
            "id",
            "ref_id",
            "event_type",
            "timestamp",
            "message",
            "body",
            "client_id",
        }
        assert (reply["event_type"], reply["message"], reply["ref_id"]) == (
            "system",
            "client-id",
            "who",
        )
        assert reply["body"] == {"client-id": client.client_id}
        assert reply["client_id"] == client.client_id
        assert HEX64.match(reply["id"]), reply
        assert TIMESTAMP.match(reply["timestamp"]), reply


async def test_client_id_without_system_gets_global_error(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("health") as client:
        assert_error_event(await client.request(CLIENT_ID), client, "system")
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
    hubd: InProcessHubd, frame: str | bytes
) -> None:
    async with hubd.subscribe("health,system") as client:
        assert_error_event(await client.request(frame), client)
        await assert_usable(client)
        reply = await client.request(CLIENT_ID)
        assert reply["body"] == {"client-id": client.client_id}
        assert client.ws.server_closed is None
    assert hubd.hub.frame_errors == 1


async def test_error_event_says_what_is_accepted(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("health") as client:
        assert "JSON" in assert_error_event(await client.request("nope"), client)
        text = assert_error_event(
            await client.request({"event_type": "nosuch", "message": "x"}), client, "nosuch"
        )
        assert "ping" in text and "client-id" in text


# -- frame size limit (hub.max_message_bytes) ----------------------------------------------


async def test_frame_of_exactly_max_message_bytes_is_accepted(hubd: InProcessHubd) -> None:
    async with hubd.subscribe("health") as client:
        frame = padded_ping(MAX_MESSAGE_BYTES)
        pong = await client.request(frame)
        assert (pong["message"], pong["ref_id"]) == ("pong", json.loads(frame)["id"])
        await assert_usable(client)


@pytest.mark.parametrize(
    ("frame", "size"),
    [
        pytest.param(padded_ping(MAX_MESSAGE_BYTES + 1), MAX_MESSAGE_BYTES + 1, id="one-over"),
        pytest.param("x" * (MAX_MESSAGE_BYTES * 3), MAX_MESSAGE_BYTES * 3, id="far-over"),
        # Under the limit in characters, over it in UTF-8 bytes.
        pytest.param(
            padded_ping(MAX_MESSAGE_BYTES + 10, "é"), MAX_MESSAGE_BYTES + 10, id="multibyte"
        ),
        pytest.param(b"\x00" * (MAX_MESSAGE_BYTES + 1), MAX_MESSAGE_BYTES + 1, id="binary"),
    ],
)
async def test_frame_over_max_message_bytes_closes_1009(
    hubd: InProcessHubd, frame: str | bytes, size: int
) -> None:
    async with hubd.subscribe("health") as client:
        await client.send(frame)
        closed = await client.closed()
        assert closed.code == 1009, closed
        assert closed.reason == f"message too big: {size} bytes, limit {MAX_MESSAGE_BYTES}"
        assert closed.frames == []
        await client.ws.wait_app_done()
    assert hubd.hub.sessions == {}


# -- idle deadline (hub.idle_timeout), on trio's virtual clock --------------------------------


async def test_idle_connection_is_closed_4408(
    make_hubd: MakeHubd, autojump_clock: trio.testing.MockClock
) -> None:
    hubd = make_hubd(hub={"idle_timeout": 30.0})
    async with hubd.subscribe("health") as client:
        start = trio.current_time()
        closed = await client.closed(within=60.0)
        assert (closed.code, closed.reason) == (4408, "idle timeout")
        assert trio.current_time() - start == pytest.approx(30.0, abs=0.5)


@pytest.mark.parametrize(
    ("channels", "frame", "answer"),
    [
        pytest.param("health,system", PING, "pong", id="ping"),
        pytest.param("system", PING, "error", id="ping-without-health"),
        pytest.param("system", {"event_type": "x", "message": "y"}, "error", id="unknown"),
    ],
)
async def test_any_client_frame_moves_the_idle_deadline(
    make_hubd: MakeHubd,
    autojump_clock: trio.testing.MockClock,
    channels: str,
    frame: dict[str, str],
    answer: str,
) -> None:
    hubd = make_hubd(hub={"idle_timeout": 30.0})
    async with hubd.subscribe(channels) as client:
        start = trio.current_time()
        for _ in range(4):
            await trio.sleep(20.0)
            assert (await client.request(frame))["message"] == answer
        assert trio.current_time() - start >= 80.0  # well past one deadline, still open
        reply = await client.request(CLIENT_ID)
        assert reply["body"] == {"client-id": client.client_id}
        assert (await client.closed(within=60.0)).code == 4408
