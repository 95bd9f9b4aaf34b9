"""Publishing over HTTP and delivery to subscribers: responses, auth, validation, size
limits, targeting, routing and order."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from .conftest import EXTRA_CHANNEL, MAX_PUBLISH_BYTES
from .helpers import (
    ADMIN,
    HEX64,
    PUB,
    PUB_PDFM,
    PUB_TOKEN,
    PUBSUB,
    SUB,
    SUB_KEY,
    TIMESTAMP,
    SessionHubd,
    Subscriber,
    assert_json_error,
    bearer,
    event,
    subscribe,
)

pytestmark = pytest.mark.e2e


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
    return response.json()


async def marker(http: httpx.AsyncClient, name: str) -> str:
    """Publish a `global` event (admin) that every subscriber receives; return its id.

    Publishes are handed to every queue before the 202, so whatever was published
    earlier reaches a subscriber before this marker, or never."""
    return str((await publish_ok(http, event("global", name), ADMIN))["id"])


async def events_before_marker(client: Subscriber, marker_id: str) -> list[dict[str, Any]]:
    _, before = await client.until(lambda e: e["id"] == marker_id)
    return before


# -- 202 responses and the delivered envelope ----------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_single_event_202_and_envelope(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        body = {"vm": "vm-1", "state": "running", "n": [1, 2.5, None, True]}
        response = await publish(http, event("pdfm", "VM_STATE_CHANGED", body=body), prefix=prefix)
        assert response.status_code == 202, response.text
        result = response.json()
        assert list(result) == ["id"] and HEX64.match(result["id"]), result
        got = await client.recv()
        assert list(got) == ["id", "event_type", "timestamp", "message", "body"]
        assert got["id"] == result["id"]
        assert (got["event_type"], got["message"], got["body"]) == (
            "pdfm",
            "VM_STATE_CHANGED",
            body,
        )
        assert TIMESTAMP.match(got["timestamp"])


@pytest.mark.parametrize("body", [None, "omitted"])
async def test_event_without_body_omits_body(
    hub_server: SessionHubd, http: httpx.AsyncClient, body: str | None
) -> None:
    async with subscribe(hub_server.port, "orchestrator") as client:
        payload = event("orchestrator", "NODE_UP")
        if body is None:
            payload["body"] = None
        result = await publish_ok(http, payload)
        got = await client.recv()
        assert got["id"] == result["id"]
        assert list(got) == ["id", "event_type", "timestamp", "message"]


async def test_falsy_bodies_are_kept(hub_server: SessionHubd, http: httpx.AsyncClient) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        bodies: list[Any] = [{}, [], 0, False, ""]
        await publish_ok(http, [event(body=b) for b in bodies])
        for expected in bodies:
            assert (await client.recv())["body"] == expected


async def test_batch_202_ids_in_order(hub_server: SessionHubd, http: httpx.AsyncClient) -> None:
    async with subscribe(hub_server.port, "pdfm,orchestrator") as client:
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


async def test_batch_of_one_still_answers_ids(http: httpx.AsyncClient) -> None:
    result = await publish_ok(http, [event()])
    assert list(result) == ["ids"] and len(result["ids"]) == 1


async def test_202_with_no_subscribers(http: httpx.AsyncClient) -> None:
    assert HEX64.match((await publish_ok(http, event(EXTRA_CHANNEL, "BUILD_DONE")))["id"])


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param(bearer("nope"), id="unknown-bearer"),
        pytest.param({"X-Api-Key": "nope"}, id="unknown-api-key"),
        pytest.param({"Authorization": "Basic cHViOnB1Yi1rZXk="}, id="basic-scheme"),
    ],
)
async def test_publish_401(http: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert_json_error(await publish(http, event(), headers), 401)


async def test_publish_with_access_token_query(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/events?access_token=pub-tok-token", json=event())
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("headers", [SUB, SUB_KEY], ids=["subscriber-token", "subscriber-key"])
async def test_publish_403_subscriber_only(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    message = assert_json_error(await publish(http, event(), headers), 403)["message"]
    assert "publisher" in message


@pytest.mark.parametrize("headers", [PUB, PUB_TOKEN, PUB_PDFM, PUBSUB])
async def test_publish_403_global_without_admin(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    message = assert_json_error(await publish(http, event("global", "X"), headers), 403)["message"]
    assert "admin" in message


async def test_publish_403_channel_outside_allow_list(http: httpx.AsyncClient) -> None:
    assert_json_error(await publish(http, event("orchestrator"), PUB_PDFM), 403)
    await publish_ok(http, event("pdfm"), PUB_PDFM)


@pytest.mark.parametrize("channel", ["pdfm", "orchestrator", EXTRA_CHANNEL, "global"])
async def test_admin_may_publish_anywhere(http: httpx.AsyncClient, channel: str) -> None:
    await publish_ok(http, event(channel), ADMIN)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["health", "system", "Health"])
@pytest.mark.parametrize("headers", [PUB, ADMIN], ids=["publisher", "admin"])
async def test_server_owned_channels_400(
    http: httpx.AsyncClient, channel: str, headers: dict[str, str]
) -> None:
    assert_json_error(await publish(http, event(channel, "pong"), headers), 400)


async def test_unknown_channel_400(http: httpx.AsyncClient) -> None:
    message = assert_json_error(await publish(http, event("nosuch")), 400)["message"]
    assert "nosuch" in message and "pdfm" in message


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
    message = assert_json_error(await publish(http, payload), 400)["message"]
    assert field in message


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
    response = await http.post(
        "/v1/events", content=content, headers={**PUB, "Content-Type": "application/json"}
    )
    assert_json_error(response, 400)


async def test_batch_over_1000_events_400(hub_server: SessionHubd, http: httpx.AsyncClient) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        message = assert_json_error(await publish(http, [event()] * 1001), 400)["message"]
        assert "1000" in message
        marker_id = await marker(http, "after-1001")
        assert await events_before_marker(client, marker_id) == []


async def test_batch_of_exactly_1000_events_accepted(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        result = await publish_ok(http, [event(body=i) for i in range(1000)])
        assert len(result["ids"]) == 1000
        got = [await client.recv() for _ in range(1000)]
        assert [g["body"] for g in got] == list(range(1000))


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
    hub_server: SessionHubd, http: httpx.AsyncClient, bad: dict[str, Any], status: int
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        batch = [event(body="first"), event(body="second"), bad, event(body="last")]
        assert_json_error(await publish(http, batch), status)
        marker_id = await marker(http, "after-refused-batch")
        assert await events_before_marker(client, marker_id) == []


# -- size limit ----------------------------------------------------------------------------


def body_of_size(size: int) -> bytes:
    """A valid single-event publish body of exactly `size` bytes."""
    empty = json.dumps(event(body={"pad": ""}), separators=(",", ":")).encode()
    content = json.dumps(
        event(body={"pad": "x" * (size - len(empty))}), separators=(",", ":")
    ).encode()
    assert len(content) == size
    return content


async def post_raw(http: httpx.AsyncClient, content: Any) -> httpx.Response:
    return await http.post(
        "/v1/events", content=content, headers={**PUB, "Content-Type": "application/json"}
    )


async def test_publish_of_exactly_max_publish_bytes_accepted(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        response = await post_raw(http, body_of_size(MAX_PUBLISH_BYTES))
        assert response.status_code == 202, response.text
        assert (await client.recv())["id"] == response.json()["id"]


async def test_publish_over_max_publish_bytes_413(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        for size in (MAX_PUBLISH_BYTES + 1, MAX_PUBLISH_BYTES * 3):
            assert_json_error(await post_raw(http, body_of_size(size)), 413)
        marker_id = await marker(http, "after-413")
        assert await events_before_marker(client, marker_id) == []


async def test_chunked_publish_over_max_publish_bytes_413(http: httpx.AsyncClient) -> None:
    """Without Content-Length the limit still holds."""
    content = body_of_size(MAX_PUBLISH_BYTES + 1)

    async def chunks() -> Any:
        for start in range(0, len(content), 16384):
            yield content[start : start + 16384]

    assert_json_error(await post_raw(http, chunks()), 413)


async def test_413_batch_publishes_nothing(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        batch = [event(body={"pad": "y" * 1000, "i": i}) for i in range(MAX_PUBLISH_BYTES // 1000)]
        assert_json_error(await publish(http, batch), 413)
        marker_id = await marker(http, "after-413-batch")
        assert await events_before_marker(client, marker_id) == []


# -- targeting -----------------------------------------------------------------------------


async def test_unknown_target_client_404(http: httpx.AsyncClient) -> None:
    target = "7f1f6a8e-2f5c-4c8b-9d55-6f3c2b7e9a10"
    message = assert_json_error(await publish(http, event(client_id=target)), 404)["message"]
    assert target in message


async def test_targeted_publish_reaches_only_that_client(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    port = hub_server.port
    async with subscribe(port, "pdfm") as a, subscribe(port, "pdfm") as b:
        result = await publish_ok(http, event("pdfm", "FOR_A", body=1, client_id=a.client_id))
        marker_id = await marker(http, "after-targeted")
        got, before = await a.until(lambda e: e["id"] == result["id"])
        assert before == []
        assert got["client_id"] == a.client_id
        assert list(got) == ["id", "event_type", "timestamp", "message", "body", "client_id"]
        assert await events_before_marker(b, marker_id) == []


async def test_targeted_global_event_from_admin(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    port = hub_server.port
    async with subscribe(port) as a, subscribe(port) as b:
        result = await publish_ok(http, event("global", "HELLO_A", client_id=a.client_id), ADMIN)
        marker_id = await marker(http, "after-targeted-global")
        assert (await a.recv())["id"] == result["id"]
        assert await events_before_marker(b, marker_id) == []


# -- routing and order ---------------------------------------------------------------------


async def test_pdfm_event_never_reaches_global_only_client(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    port = hub_server.port
    async with (
        subscribe(port) as global_only,
        subscribe(port, "orchestrator,health,system") as others,
        subscribe(port, "pdfm") as pdfm,
    ):
        published = await publish_ok(
            http, [event("pdfm", "VM_STATE_CHANGED", body=i) for i in range(5)]
        )
        marker_id = await marker(http, "after-pdfm")
        assert await events_before_marker(global_only, marker_id) == []
        assert await events_before_marker(others, marker_id) == []
        got = await events_before_marker(pdfm, marker_id)
        assert [g["id"] for g in got] == published["ids"]


async def test_channel_events_reach_only_their_subscribers(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    port = hub_server.port
    async with subscribe(port, EXTRA_CHANNEL) as builds, subscribe(port, "orchestrator") as orch:
        extra = await publish_ok(http, event(EXTRA_CHANNEL, "BUILD_DONE"))
        cluster = await publish_ok(http, event("orchestrator", "NODE_UP"))
        marker_id = await marker(http, "after-channels")
        assert [e["id"] for e in await events_before_marker(builds, marker_id)] == [extra["id"]]
        assert [e["id"] for e in await events_before_marker(orch, marker_id)] == [cluster["id"]]


async def test_global_event_reaches_everyone(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    port = hub_server.port
    async with (
        subscribe(port) as a,
        subscribe(port, "pdfm") as b,
        subscribe(port, "health,system") as c,
        subscribe(port, f"orchestrator,{EXTRA_CHANNEL}", SUB_KEY) as d,
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


async def test_one_publishers_events_arrive_in_order(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    total = 500
    port = hub_server.port
    async with subscribe(port, "pdfm,orchestrator") as a, subscribe(port, "pdfm") as b:
        received: dict[str, list[int]] = {"a": [], "b": []}

        async def read(client: Subscriber, name: str, count: int) -> None:
            while len(received[name]) < count:
                got = await client.recv()
                if got["event_type"] == "pdfm":
                    received[name].append(got["body"]["seq"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, a, "a", total)
            nursery.start_soon(read, b, "b", total)
            seq = 0
            while seq < total:
                # Alternate single events and batches of various sizes.
                size = min([1, 7, 1, 50, 1, 13][seq % 6], total - seq)
                batch = [event("pdfm", "SEQ", body={"seq": seq + i}) for i in range(size)]
                seq += size
                await publish_ok(http, batch if size > 1 else batch[0])
                if seq % 3 == 0:
                    await publish_ok(http, event("orchestrator", "NOISE"))
        assert received["a"] == list(range(total))
        assert received["b"] == list(range(total))


# -- every HTTP error is JSON --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nope", 404),
        ("POST", "/v2/events", 404),
        ("GET", "/", 404),
        ("GET", "/v1/events", 405),
        ("PUT", "/api/v1/events", 405),
        ("GET", "/v1/ws/unsubscribe", 405),
    ],
)
async def test_http_errors_are_json(
    http: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    assert_json_error(await http.request(method, path, headers=ADMIN), status)
