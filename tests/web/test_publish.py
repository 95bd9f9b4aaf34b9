"""POST /v1/events in process: 202 answers, every refusal with its JSON error payload and
headers, the size limit, the body deadline, that a refused publish delivers nothing, and
which subscribers an event reaches. tests/e2e/test_publish.py keeps a smoke test over real
sockets and the order of one publisher's events under real scheduling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio

from ..helpers import (
    ADMIN,
    EXTRA_CHANNEL,
    HEX64,
    MAX_PUBLISH_BYTES,
    PUB,
    PUB_PDFM,
    PUB_TOKEN,
    PUBSUB,
    SUB,
    SUB_KEY,
    TIMESTAMP,
    assert_json_error,
    bearer,
    event,
)
from .asgi import InProcessHubd, Subscriber
from .conftest import MakeHubd

JSON_HEADERS = {**PUB, "Content-Type": "application/json"}


async def publish(
    http: httpx.AsyncClient,
    payload: Any,
    headers: dict[str, str] | None = None,
    *,
    prefix: str = "/v1",
) -> httpx.Response:
    return await http.post(
        f"{prefix}/events", json=payload, headers=PUB if headers is None else headers
    )


async def publish_ok(
    http: httpx.AsyncClient, payload: Any, headers: dict[str, str] | None = None
) -> Any:
    response = await publish(http, payload, headers)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    assert "connection" not in response.headers
    return response.json()


def refused(response: httpx.Response, status: int, code: str, *, close: bool) -> str:
    """A JSON error with `code`; `Connection: close` exactly when the body was left unread.
    Returns the message."""
    error = assert_json_error(response, status)
    assert error["error"] == code, error
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers.get("connection") == ("close" if close else None), response.headers
    return error["message"]


async def delivered_before_marker(
    http: httpx.AsyncClient, *clients: Subscriber
) -> list[list[dict[str, Any]]]:
    """Publish a `global` marker (every subscriber gets it); for each client, what it got
    before the marker. Publishes are handed to every queue before their 202, so whatever
    was published earlier reached a client before the marker, or never."""
    marker = (await publish_ok(http, event("global", "MARKER"), ADMIN))["id"]
    got = []
    for client in clients:
        _, before = await client.until(lambda e: e["id"] == marker)
        got.append(before)
    return got


async def nothing_delivered(http: httpx.AsyncClient, client: Subscriber) -> None:
    """A `global` marker published now is the next thing the client gets."""
    assert await delivered_before_marker(http, client) == [[]]


@pytest.fixture
async def pdfm(hubd: InProcessHubd) -> AsyncIterator[Subscriber]:
    async with hubd.subscribe("pdfm") as client:
        yield client


# -- 202 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_single_event_202_and_delivered_envelope(
    http: httpx.AsyncClient, pdfm: Subscriber, prefix: str
) -> None:
    body = {"vm": "vm-1", "state": "running", "n": [1, 2.5, None, True]}
    response = await publish(http, event("pdfm", "VM_STATE_CHANGED", body=body), prefix=prefix)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    result = response.json()
    assert list(result) == ["id"] and HEX64.match(result["id"]), result
    got = await pdfm.recv()
    assert list(got) == ["id", "event_type", "timestamp", "message", "body"]
    assert got["id"] == result["id"]
    assert (got["event_type"], got["message"], got["body"]) == ("pdfm", "VM_STATE_CHANGED", body)
    assert TIMESTAMP.match(got["timestamp"])


@pytest.mark.parametrize("body", ["omitted", None], ids=["omitted", "null"])
async def test_event_without_body_omits_body(
    http: httpx.AsyncClient, pdfm: Subscriber, body: str | None
) -> None:
    payload = event("pdfm", "NODE_UP")
    if body is None:
        payload["body"] = None
    result = await publish_ok(http, payload)
    got = await pdfm.recv()
    assert got["id"] == result["id"]
    assert list(got) == ["id", "event_type", "timestamp", "message"]


async def test_falsy_bodies_are_kept(http: httpx.AsyncClient, pdfm: Subscriber) -> None:
    bodies: list[Any] = [{}, [], 0, False, ""]
    await publish_ok(http, [event(body=b) for b in bodies])
    for expected in bodies:
        assert (await pdfm.recv())["body"] == expected


async def test_202_with_no_subscribers(http: httpx.AsyncClient) -> None:
    assert HEX64.match((await publish_ok(http, event(EXTRA_CHANNEL, "BUILD_DONE")))["id"])


async def test_batch_202_ids_in_order(hubd: InProcessHubd, http: httpx.AsyncClient) -> None:
    async with hubd.subscribe("pdfm,orchestrator") as client:
        batch = [
            event("pdfm", "A", body={"i": 0}),
            event("orchestrator", "B", body={"i": 1}),
            event("PDFM", "C", body={"i": 2}),
        ]
        result = await publish_ok(http, batch)
        assert list(result) == ["ids"]
        ids = result["ids"]
        assert len(ids) == 3 and len(set(ids)) == 3 and all(HEX64.match(i) for i in ids)
        got = [await client.recv() for _ in batch]
        assert [g["id"] for g in got] == ids
        assert [g["message"] for g in got] == ["A", "B", "C"]
        assert [g["event_type"] for g in got] == ["pdfm", "orchestrator", "pdfm"]


async def test_batch_of_exactly_1000_events_accepted(
    http: httpx.AsyncClient, pdfm: Subscriber
) -> None:
    result = await publish_ok(http, [event(body=i) for i in range(1000)])
    assert len(result["ids"]) == 1000
    got = [await pdfm.recv() for _ in range(1000)]
    assert [g["body"] for g in got] == list(range(1000))
    assert [g["id"] for g in got] == result["ids"]


async def test_batch_of_one_still_answers_ids(http: httpx.AsyncClient) -> None:
    result = await publish_ok(http, [event()])
    assert list(result) == ["ids"] and len(result["ids"]) == 1


async def test_publish_with_access_token_query(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/events?access_token=pub-tok-token", json=event())
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("channel", ["pdfm", "orchestrator", EXTRA_CHANNEL, "global"])
async def test_admin_may_publish_anywhere(http: httpx.AsyncClient, channel: str) -> None:
    await publish_ok(http, event(channel), ADMIN)


async def test_content_type_is_not_checked(http: httpx.AsyncClient) -> None:
    """No 415: the body is read as JSON whatever the Content-Type says."""
    response = await http.post(
        "/v1/events",
        content=json.dumps(event()).encode(),
        headers={**PUB, "Content-Type": "text/plain"},
    )
    assert response.status_code == 202, response.text


# -- 401 / 403 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param(bearer("nope"), id="unknown-bearer"),
        pytest.param({"X-Api-Key": "nope"}, id="unknown-api-key"),
        pytest.param({"Authorization": "Basic cHViOnB1Yi1rZXk="}, id="basic-scheme"),
    ],
)
async def test_publish_401_says_the_connection_closes(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Refused before the body is read: the answer announces the close."""
    message = refused(await publish(http, event(), headers), 401, "unauthorized", close=True)
    assert "nope" not in message


@pytest.mark.parametrize("headers", [SUB, SUB_KEY], ids=["subscriber-token", "subscriber-key"])
async def test_publish_403_subscriber_only(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Refused after the body was read: the connection stays usable (no close)."""
    message = refused(await publish(http, event(), headers), 403, "forbidden", close=False)
    assert "publisher" in message


@pytest.mark.parametrize("headers", [PUB, PUB_TOKEN, PUB_PDFM, PUBSUB])
async def test_publish_403_global_without_admin(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await publish(http, event("global", "X"), headers)
    assert "admin" in refused(response, 403, "forbidden", close=False)


async def test_publish_403_channel_outside_allow_list(http: httpx.AsyncClient) -> None:
    response = await publish(http, event("orchestrator"), PUB_PDFM)
    assert "orchestrator" in refused(response, 403, "forbidden", close=False)
    await publish_ok(http, event("pdfm"), PUB_PDFM)


# -- 400 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["health", "system", "Health"])
@pytest.mark.parametrize("headers", [PUB, ADMIN], ids=["publisher", "admin"])
async def test_server_owned_channels_400(
    http: httpx.AsyncClient, channel: str, headers: dict[str, str]
) -> None:
    response = await publish(http, event(channel, "pong"), headers)
    refused(response, 400, "server_owned_channel", close=False)


async def test_unknown_channel_400_lists_valid_ones(http: httpx.AsyncClient) -> None:
    message = refused(await publish(http, event("nosuch")), 400, "unknown_channel", close=False)
    assert "nosuch" in message and "pdfm" in message and EXTRA_CHANNEL in message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"message": "X"}, "event_type", id="missing-event_type"),
        pytest.param({"event_type": "pdfm"}, "message", id="missing-message"),
        pytest.param({"event_type": 5, "message": "X"}, "event_type", id="event_type-number"),
        pytest.param({"event_type": "pdfm", "message": ["X"]}, "message", id="message-array"),
        pytest.param({"event_type": "pdfm", "message": ""}, "message", id="message-empty"),
        pytest.param(
            {"event_type": "pdfm", "message": "X", "client_id": 7}, "client_id", id="client_id-int"
        ),
        pytest.param(
            {"event_type": "pdfm", "message": "X", "colour": "red"}, "colour", id="unknown"
        ),
        pytest.param([event(), {"event_type": "pdfm"}], "message", id="batch-second-bad"),
    ],
)
async def test_malformed_event_400_names_the_field(
    http: httpx.AsyncClient, payload: Any, field: str
) -> None:
    assert field in refused(await publish(http, payload), 400, "invalid_event", close=False)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"42", id="number"),
        pytest.param(b'"event"', id="string"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b"[1, 2]", id="array-of-numbers"),
    ],
)
async def test_bad_body_400(http: httpx.AsyncClient, content: bytes) -> None:
    response = await http.post("/v1/events", content=content, headers=JSON_HEADERS)
    assert_json_error(response, 400)
    assert "connection" not in response.headers


async def test_batch_over_1000_events_400(http: httpx.AsyncClient, pdfm: Subscriber) -> None:
    response = await publish(http, [event()] * 1001)
    assert "1000" in assert_json_error(response, 400)["message"]
    await nothing_delivered(http, pdfm)


@pytest.mark.parametrize(
    ("bad", "status"),
    [
        pytest.param(event("health", "X"), 400, id="server-owned"),
        pytest.param(event("nosuch", "X"), 400, id="unknown-channel"),
        pytest.param({"event_type": "pdfm"}, 400, id="malformed"),
        pytest.param(event("global", "X"), 403, id="global-without-admin"),
        pytest.param(event(client_id="00000000-0000-4000-8000-000000000000"), 404, id="no-target"),
    ],
)
async def test_batch_is_all_or_nothing(
    hubd: InProcessHubd,
    http: httpx.AsyncClient,
    pdfm: Subscriber,
    bad: dict[str, Any],
    status: int,
) -> None:
    batch = [event(body="first"), event(body="second"), bad, event(body="last")]
    assert_json_error(await publish(http, batch), status)
    assert hubd.hub.stats()["published"] == 0
    await nothing_delivered(http, pdfm)


# -- targeting -----------------------------------------------------------------------------


async def test_unknown_target_client_404(http: httpx.AsyncClient) -> None:
    target = "7f1f6a8e-2f5c-4c8b-9d55-6f3c2b7e9a10"
    response = await publish(http, event(client_id=target))
    assert target in refused(response, 404, "unknown_client", close=False)


async def test_targeted_publish_reaches_only_that_client(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm") as a, hubd.subscribe("pdfm") as b:
        result = await publish_ok(http, event("pdfm", "FOR_A", body=1, client_id=a.client_id))
        got = await a.recv()
        assert got["id"] == result["id"]
        assert got["client_id"] == a.client_id
        assert list(got) == ["id", "event_type", "timestamp", "message", "body", "client_id"]
        await nothing_delivered(http, b)


async def test_targeted_global_event_from_admin(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe() as a, hubd.subscribe() as b:
        result = await publish_ok(http, event("global", "HELLO_A", client_id=a.client_id), ADMIN)
        got = await a.recv()
        assert (got["id"], got["client_id"]) == (result["id"], a.client_id)
        await nothing_delivered(http, b)


# -- routing -------------------------------------------------------------------------------


async def test_pdfm_event_never_reaches_other_subscribers(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with (
        hubd.subscribe() as global_only,
        hubd.subscribe("orchestrator,health,system") as others,
        hubd.subscribe("pdfm") as pdfm,
    ):
        published = await publish_ok(http, [event("pdfm", body=i) for i in range(5)])
        none, none_either, got = await delivered_before_marker(http, global_only, others, pdfm)
        assert none == none_either == []
        assert [g["id"] for g in got] == published["ids"]


async def test_channel_events_reach_only_their_subscribers(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe(EXTRA_CHANNEL) as builds, hubd.subscribe("orchestrator") as orch:
        extra = await publish_ok(http, event(EXTRA_CHANNEL, "BUILD_DONE"))
        cluster = await publish_ok(http, event("orchestrator", "NODE_UP"))
        to_builds, to_orch = await delivered_before_marker(http, builds, orch)
        assert [e["id"] for e in to_builds] == [extra["id"]]
        assert [e["id"] for e in to_orch] == [cluster["id"]]


async def test_global_event_reaches_everyone(hubd: InProcessHubd, http: httpx.AsyncClient) -> None:
    async with (
        hubd.subscribe() as a,
        hubd.subscribe("pdfm") as b,
        hubd.subscribe("health,system") as c,
        hubd.subscribe(f"orchestrator,{EXTRA_CHANNEL}", SUB_KEY) as d,
    ):
        result = await publish_ok(http, event("global", "MAINTENANCE", body={"in": 5}), ADMIN)
        for client in (a, b, c, d):
            got = await client.recv()
            assert got["id"] == result["id"]
            assert (got["event_type"], got["message"], got["body"]) == (
                "global",
                "MAINTENANCE",
                {"in": 5},
            )
            assert "client_id" not in got


# -- size limit (hub.max_publish_bytes) ------------------------------------------------------


def body_of_size(size: int) -> bytes:
    """A valid single-event publish body of exactly `size` bytes."""
    empty = json.dumps(event(body={"pad": ""}), separators=(",", ":")).encode()
    content = json.dumps(
        event(body={"pad": "x" * (size - len(empty))}), separators=(",", ":")
    ).encode()
    assert len(content) == size
    return content


async def test_publish_of_exactly_max_publish_bytes_accepted(
    http: httpx.AsyncClient, pdfm: Subscriber
) -> None:
    response = await http.post(
        "/v1/events", content=body_of_size(MAX_PUBLISH_BYTES), headers=JSON_HEADERS
    )
    assert response.status_code == 202, response.text
    assert (await pdfm.recv())["id"] == response.json()["id"]


@pytest.mark.parametrize("size", [MAX_PUBLISH_BYTES + 1, MAX_PUBLISH_BYTES * 3])
async def test_publish_over_max_publish_bytes_413(
    http: httpx.AsyncClient, pdfm: Subscriber, size: int
) -> None:
    response = await http.post("/v1/events", content=body_of_size(size), headers=JSON_HEADERS)
    message = refused(response, 413, "payload_too_large", close=True)
    assert f"the request body is {size} bytes; the limit is {MAX_PUBLISH_BYTES}" in message
    assert "hub.max_publish_bytes" in message
    await nothing_delivered(http, pdfm)


async def test_413_batch_publishes_nothing(
    hubd: InProcessHubd, http: httpx.AsyncClient, pdfm: Subscriber
) -> None:
    batch = [event(body={"pad": "y" * 1000, "i": i}) for i in range(MAX_PUBLISH_BYTES // 1000)]
    refused(await publish(http, batch), 413, "payload_too_large", close=True)
    assert hubd.hub.stats()["published"] == 0
    await nothing_delivered(http, pdfm)


async def test_chunked_publish_over_max_publish_bytes_413(
    http: httpx.AsyncClient, pdfm: Subscriber
) -> None:
    """Without Content-Length the limit still holds, counted as the body arrives; the rest
    of the body is left unread, so the answer announces the close."""
    content = body_of_size(MAX_PUBLISH_BYTES + 1)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 16384):
            yield content[start : start + 16384]

    response = await http.post("/v1/events", content=chunks(), headers=JSON_HEADERS)
    message = refused(response, 413, "payload_too_large", close=True)
    assert f"is more than {MAX_PUBLISH_BYTES} bytes; the limit is {MAX_PUBLISH_BYTES}" in message
    await nothing_delivered(http, pdfm)


async def test_a_body_that_stops_arriving_gets_408_and_a_close(
    make_hubd: MakeHubd, autojump_clock: trio.testing.MockClock
) -> None:
    hubd = make_hubd(server={"body_timeout": 2.0})
    stalled = trio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b'{"event_type": "pdfm", '
        stalled.set()
        await trio.sleep(60)
        yield b'"message": "X"}'

    async with hubd.http() as http:
        start = trio.current_time()
        response = await http.post("/v1/events", content=stalling(), headers=JSON_HEADERS)
        assert stalled.is_set()
        assert trio.current_time() - start == pytest.approx(2.0)
    message = refused(response, 408, "request_timeout", close=True)
    assert "2 s (server.body_timeout)" in message
    assert hubd.hub.stats()["published"] == 0


async def test_content_length_with_transfer_encoding_is_400_and_a_close(
    hubd: InProcessHubd,
) -> None:
    """Both framing headers: refused before any route reads the body (request smuggling)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body must not be read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"hubd.test"),
            (b"x-api-key", b"pub-key"),
            (b"content-length", b"100"),
            (b"transfer-encoding", b"chunked"),
        ],
        "client": ("10.9.9.9", 1234),
        "server": ("hubd.test", 80),
    }
    await hubd.app(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and start["status"] == 400
    assert dict(start["headers"])[b"connection"] == b"close"
    error = json.loads(body["body"])
    assert error["error"] == "bad_request"
    assert "Content-Length and Transfer-Encoding" in error["message"]


# -- every HTTP error is JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nope", 404, "not_found"),
        ("POST", "/v2/events", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("GET", "/v1/events", 405, "method_not_allowed"),
        ("PUT", "/api/v1/events", 405, "method_not_allowed"),
        ("GET", "/v1/ws/unsubscribe", 405, "method_not_allowed"),
    ],
)
async def test_http_errors_are_json(
    http: httpx.AsyncClient, method: str, path: str, status: int, code: str
) -> None:
    error = assert_json_error(await http.request(method, path, headers=ADMIN), status)
    assert error["error"] == code
    assert path in error["message"]
    if status == 405:
        assert "use POST" in error["message"]
