"""Input bounds over real sockets: channel lists over `hub.max_channels_per_request`,
JSON nested past 64 levels (publish bodies and client frames), client values quoted
briefly in error bodies and in the log, refused handshakes logged at a bounded rate, the
request body deadline (`server.body_timeout`) and requests framed by both Content-Length
and Transfer-Encoding."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import trio

from ..helpers import HOST, PUB, SUB, assert_json_error, bearer, error_object, event
from .conftest import StartHubd, shared_hubd
from .helpers import (
    WAIT,
    SessionHubd,
    http_client,
    raw_connect,
    rejected,
    rejection_error,
    subscribe,
)

pytestmark = pytest.mark.e2e

# An error message quotes at most 120 characters of a client's value.
SHORT = 500


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def request_head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def response_then_close(
    stream: trio.SocketStream, within: float
) -> tuple[int, dict[str, str], bytes]:
    """Read one response and then the end of the stream, all within `within` seconds
    (the server must close the connection itself, promptly)."""
    data = b""
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert len(body) == int(headers["content-length"]), data
    return int(status_line.split()[1]), headers, body


# -- channel lists ---------------------------------------------------------------------------


async def test_subscribe_over_the_channel_cap_is_refused_before_the_upgrade(
    hub_server: SessionHubd,
) -> None:
    error = rejection_error(await rejected(hub_server.port, ",".join(["pdfm"] * 65), SUB), 400)
    assert error["error"] == "too_many_channels"
    assert "65 channel names" in error["message"]
    assert "at most 64" in error["message"]
    assert "hub.max_channels_per_request" in error["message"]
    # Unknown names: counted first, so the answer is as short.
    many = ",".join(f"chan{i}" for i in range(5000))
    error = rejection_error(await rejected(hub_server.port, many, SUB), 400)
    assert error["error"] == "too_many_channels"
    assert len(error["message"]) < SHORT


async def test_a_huge_unsubscribe_list_is_refused_at_once(hub_server: SessionHubd) -> None:
    names = [f"n{i}" for i in range(25_000)]  # ~220 KB, under the shared server's limit
    async with (
        subscribe(hub_server.port, "pdfm") as sub,
        http_client(hub_server.url) as http,
    ):
        # Quadratic, this list stalled the whole server for about 4 s, and was answered
        # with unknown_channel listing every name.
        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": sub.client_id, "event_types": names},
            headers=SUB,
        )
        error = assert_json_error(response, 400)
        assert error["error"] == "too_many_channels"
        assert "25000 channel names" in error["message"]
        assert len(response.content) < SHORT
        # Nothing was unsubscribed: the connection still gets its events.
        response = await http.post("/v1/events", json=event("pdfm", "STILL"), headers=PUB)
        assert response.status_code == 202
        assert (await sub.recv())["message"] == "STILL"


# -- JSON depth ------------------------------------------------------------------------------


async def test_a_deep_client_frame_gets_an_error_event_and_the_connection_stays_open(
    hub_server: SessionHubd,
) -> None:
    frame = '{"event_type":"health","message":"ping","id":"deep","meta":' + nested(1100) + "}"
    assert len(frame) < 4096  # under the shared server's frame limit: only depth is at fault
    async with subscribe(hub_server.port, "health") as sub:
        reply = await sub.request(frame)
        # Refused before decoding, so its id is not read: the reply has a fresh ref_id.
        assert (reply["event_type"], reply["message"]) == ("global", "error")
        assert "more than 64 levels deep" in reply["body"]["error"]
        pong = await sub.request({"event_type": "health", "message": "ping", "id": "after"})
        assert (pong["message"], pong["ref_id"]) == ("pong", "after")
    assert "RecursionError" not in hub_server.output


async def test_a_deep_publish_body_is_a_400(hub_server: SessionHubd) -> None:
    body = '{"event_type":"pdfm","message":"DEEP","body":' + nested(1100) + "}"
    async with http_client(hub_server.url) as http:
        response = await http.post("/v1/events", content=body, headers=PUB)
        error = assert_json_error(response, 400)
        assert error["error"] == "too_deep"
        assert "at most 64" in error["message"]
        shallow = '{"event_type":"pdfm","message":"OK","body":' + nested(63) + "}"
        response = await http.post("/v1/events", content=shallow, headers=PUB)
        assert response.status_code == 202, response.text
    assert "RecursionError" not in hub_server.output


# -- client values quoted briefly ------------------------------------------------------------


async def test_a_huge_origin_is_not_echoed(hub_server: SessionHubd) -> None:
    origin = "https://" + "o" * 10_000 + ".example"
    error = rejection_error(await rejected(hub_server.port, "pdfm", {**SUB, "Origin": origin}), 403)
    assert error["error"] == "forbidden_origin"
    assert len(error["message"]) < SHORT
    assert "'https://" + "o" * 112 + "…'" in error["message"]
    assert "o" * 200 not in hub_server.output


async def test_huge_paths_are_not_echoed(hub_server: SessionHubd) -> None:
    path = "/v1/" + "p" * 5000
    async with http_client(hub_server.url) as http:
        for response in (await http.get(path), await http.delete("/v1/ws/stats" + "/" * 3000)):
            assert response.status_code in (404, 405)
            assert len(assert_json_error(response, response.status_code)["message"]) < SHORT
    error = rejection_error(await rejected(hub_server.port, resource=path), 404)
    assert len(error["message"]) < SHORT


async def test_huge_since_and_client_id_are_not_echoed(hub_server: SessionHubd) -> None:
    error = rejection_error(
        await rejected(hub_server.port, "pdfm", {**SUB, "Last-Event-ID": "z" * 5000}), 400
    )
    assert len(error["message"]) < SHORT
    async with http_client(hub_server.url) as http:
        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": "c" * 100_000, "event_types": ["pdfm"]},
            headers=SUB,
        )
        assert len(assert_json_error(response, 404)["message"]) < SHORT
        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": "c", "event_types": ["pdfm"], "f" * 100_000: 1},
            headers=SUB,
        )
        assert len(assert_json_error(response, 400)["message"]) < SHORT
        response = await http.post(
            "/v1/events", json=event("pdfm", client_id="c" * 100_000), headers=PUB
        )
        assert len(assert_json_error(response, 404)["message"]) < SHORT
        response = await http.post("/v1/events", json=event("e" * 100_000), headers=PUB)
        assert len(assert_json_error(response, 400)["message"]) < SHORT


# -- refusals logged at a bounded rate -------------------------------------------------------


async def test_refused_handshakes_are_logged_at_most_20_per_10_s(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd()
    for _ in range(30):
        rejection_error(await rejected(server.port, "pdfm", bearer("nope")), 401)
    # The count of the 10 left out comes when the interval ends, with no further refusal.
    match = await server.wait_for_line(
        re.compile(r"suppressed (\d+) rejected handshakes in the last (\d+) s"), within=20.0
    )
    assert (match[1], match[2]) == ("10", "10")
    assert sum(" rejected ip=" in line for line in server.lines) == 20
    async with http_client(server.url) as http:
        metrics = (await http.get("/metrics", headers=bearer("admin-token"))).text
    assert 'hubd_connections_rejected_total{reason="unauthorized",status="401"} 30' in metrics


# -- request bodies --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def body_timeout_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    with shared_hubd(tmp_path_factory, "body-timeout", server={"body_timeout": 0.5}) as server:
        yield server


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/v1/events", PUB), ("/v1/ws/unsubscribe", SUB)],
    ids=["publish", "unsubscribe"],
)
async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(
    body_timeout_server: SessionHubd, path: str, headers: dict[str, str]
) -> None:
    server = body_timeout_server
    stream = await raw_connect(server.port)
    async with stream:
        head = request_head(
            "POST",
            path,
            server.port,
            {**headers, "Content-Type": "application/json", "Content-Length": "100"},
        )
        await stream.send_all(head + b'{"event_t')  # 10 of the 100 bytes, then nothing
        # Without the body timeout no answer came at all (publish), or only after Quart's
        # own 30 s (unsubscribe): both beyond WAIT.
        status, response_headers, body = await response_then_close(stream, WAIT)
    assert status == 408
    assert response_headers["connection"].lower() == "close"
    error = error_object(json.loads(body))
    assert error["error"] == "request_timeout"
    assert "0.5 s (server.body_timeout)" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [("POST", "/v1/events", PUB), ("GET", "/v1/health", {})],
    ids=["publish", "health"],
)
async def test_content_length_with_transfer_encoding_gets_400_and_a_close(
    hub_server: SessionHubd, method: str, path: str, headers: dict[str, str]
) -> None:
    body = json.dumps(event("pdfm", "SMUGGLED")).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    stream = await raw_connect(hub_server.port)
    async with stream:
        head = request_head(
            method,
            path,
            hub_server.port,
            {
                **headers,
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Transfer-Encoding": "chunked",
            },
        )
        await stream.send_all(head + chunked)
        # Closed at once, not after the keep-alive timeout (75 s).
        status, response_headers, response_body = await response_then_close(stream, 3.0)
    assert status == 400
    assert response_headers["connection"].lower() == "close"
    error = error_object(json.loads(response_body))
    assert error["error"] == "bad_request"
    assert "Content-Length and Transfer-Encoding" in error["message"]


@pytest.mark.parametrize("path", ["/v1/events", "/v1/ws/unsubscribe"])
async def test_a_refusal_before_the_body_is_read_says_the_connection_closes(
    hub_server: SessionHubd, path: str
) -> None:
    """The body is left unread, so the server closes the connection after answering; the
    answer must say so, or a keep-alive client sends its next request into a closing
    connection (seen as `Server disconnected without sending a response`)."""
    stream = await raw_connect(hub_server.port)
    async with stream:
        head = request_head(
            "POST",
            path,
            hub_server.port,
            {"Content-Type": "application/json", "Content-Length": "100"},
        )
        await stream.send_all(head)  # no credentials, and the body is never sent
        got, response_headers, body = await response_then_close(stream, WAIT)
    assert got == 401
    assert response_headers["connection"].lower() == "close"
    assert error_object(json.loads(body))["error"] == "unauthorized"


async def test_an_error_after_the_body_was_read_keeps_the_connection(
    hub_server: SessionHubd,
) -> None:
    async with http_client(hub_server.url) as client:
        refused = await client.post("/v1/events", json={"nope": 1}, headers=PUB)
        assert refused.status_code == 400
        assert refused.headers.get("connection", "").lower() != "close"
        again = await client.post("/v1/events", json=event(), headers=PUB)
        assert again.status_code == 202
