"""Publishing over real sockets: one event end to end on both path prefixes, refusals as
JSON errors from the real server, and the order of one publisher's events under real
scheduling. Every publish rule (validation, auth, size limits, targeting, routing) is in
tests/web/test_publish.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from ..helpers import ADMIN, HEX64, PUB, SUB, TIMESTAMP, assert_json_error, event
from .helpers import SessionHubd, Subscriber, subscribe

pytestmark = pytest.mark.e2e


async def publish_ok(http: httpx.AsyncClient, payload: Any) -> Any:
    response = await http.post("/v1/events", json=payload, headers=PUB)
    assert response.status_code == 202, response.text
    return response.json()


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_single_event_202_and_envelope(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        body = {"vm": "vm-1", "state": "running", "n": [1, 2.5, None, True]}
        response = await http.post(
            f"{prefix}/events", json=event("pdfm", "VM_STATE_CHANGED", body=body), headers=PUB
        )
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


async def test_refusals_are_json_errors(http: httpx.AsyncClient) -> None:
    """Whichever layer refuses (auth, validation, routing), the real server answers with
    the JSON error body."""
    for response, status, code in [
        (await http.post("/v1/events", json=event(), headers={}), 401, "unauthorized"),
        (await http.post("/v1/events", json=event(), headers=SUB), 403, "forbidden"),
        (await http.post("/v1/events", json=event("nosuch"), headers=PUB), 400, "unknown_channel"),
        (await http.get("/v1/nope", headers=ADMIN), 404, "not_found"),
        (await http.get("/v1/events", headers=ADMIN), 405, "method_not_allowed"),
    ]:
        assert assert_json_error(response, status)["error"] == code


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
