"""Two `hubd serve` nodes sharing a real redis-server (started and stopped by the test):
delivery across nodes in order, the per-IP rule across nodes, unsubscribe and resume on
the other node, and Redis going away and coming back mid-test."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from ..helpers import ADMIN, SUB, assert_json_error, event
from ..redis_server import RedisServer
from .conftest import StartHubd, shared_hubd
from .helpers import (
    HubdProcess,
    SessionHubd,
    Subscriber,
    client_ip,
    http_client,
    rejected,
    rejection_error,
    subscribe,
)

pytestmark = pytest.mark.e2e

_prefixes = itertools.count(1)


CONNECTED = re.compile(r"backplane connected")


def node_sections(redis: RedisServer) -> dict[str, dict[str, Any]]:
    """The config of the nodes of one cluster (a key prefix of its own on `redis`)."""
    backplane = {
        "kind": "redis",
        "url": redis.url,
        "prefix": f"e2e{next(_prefixes)}",
        "lease_seconds": 3.0,
    }
    return {"backplane": backplane, "hub": {"history_size": 100}}


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[tuple[SessionHubd, SessionHubd]]:
    """Two nodes on the shared redis-server, for the tests that leave Redis alone. Each
    test waits, before it ends, for what it published to reach every node it watches, and
    uses client IPs of its own."""
    sections = node_sections(redis_server)
    with (
        shared_hubd(tmp_path_factory, "node-a", **sections) as a,
        shared_hubd(tmp_path_factory, "node-b", **sections) as b,
    ):
        for node in (a, b):
            node.wait_for_line_blocking(CONNECTED)
        yield a, b


async def two_nodes(start_hubd: StartHubd, redis: RedisServer) -> tuple[HubdProcess, HubdProcess]:
    """Two nodes of a cluster of their own, for a test that stops and restarts `redis`."""
    sections = node_sections(redis)
    nodes = [await start_hubd(**sections) for _ in "ab"]
    for node in nodes:
        await node.wait_for_line(CONNECTED)
    return nodes[0], nodes[1]


async def publish(http: httpx.AsyncClient, *events: dict[str, Any]) -> list[str]:
    response = await http.post(
        "/v1/events", json=list(events) if len(events) > 1 else events[0], headers=ADMIN
    )
    assert response.status_code == 202, response.text
    body = response.json()
    return list(body["ids"]) if "ids" in body else [body["id"]]


async def messages(client: Subscriber, n: int) -> list[str]:
    return [(await client.recv())["message"] for _ in range(n)]


async def test_events_cross_nodes_once_and_in_order(
    cluster: tuple[SessionHubd, SessionHubd],
) -> None:
    a, b = cluster
    async with (
        subscribe(a.port, "pdfm") as on_a,
        subscribe(b.port, "pdfm") as on_b,
        http_client(a.url) as http_a,
        http_client(b.url) as http_b,
    ):
        await publish(http_a, event("pdfm", "1"))
        await publish(http_b, event("pdfm", "2"), event("pdfm", "3"))
        await publish(http_a, event("pdfm", "4"))
        for client in (on_a, on_b):
            assert await messages(client, 4) == ["1", "2", "3", "4"]
        marker = await publish(http_b, event("pdfm", "end"))
        for client in (on_a, on_b):
            assert (await client.recv())["id"] == marker[0]


async def test_second_connection_from_an_ip_on_another_node_is_409(
    cluster: tuple[SessionHubd, SessionHubd],
) -> None:
    a, b = cluster
    ip = client_ip()
    async with subscribe(a.port, "pdfm", ip=ip):
        exc = await rejected(b.port, "pdfm", SUB, ip=ip)
        body = rejection_error(exc, 409)
        assert body["error"] == "ip_in_use"
        assert ip in body["message"]
    # Closed on A: B admits it once the release has reached Redis.
    with trio.fail_after(10):
        while True:
            try:
                async with subscribe(b.port, "pdfm", ip=ip):
                    break
            except Exception:
                await trio.sleep(0.05)


async def test_unsubscribe_through_the_other_node(
    cluster: tuple[SessionHubd, SessionHubd],
) -> None:
    a, b = cluster
    async with subscribe(b.port, "pdfm,orchestrator") as client, http_client(a.url) as http:
        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
            headers=SUB,
        )
        assert response.status_code == 200, response.text
        assert response.json()["subscriptions"] == ["orchestrator", "global"]
        notice = await client.recv()
        assert notice["message"] == "unsubscribed"
        await publish(http, event("pdfm", "gone"))
        kept = await publish(http, event("orchestrator", "kept"))
        assert (await client.recv())["id"] == kept[0]


async def test_resume_on_the_other_node(cluster: tuple[SessionHubd, SessionHubd]) -> None:
    a, b = cluster
    ip = client_ip()
    async with http_client(a.url) as http:
        async with subscribe(a.port, "pdfm", ip=ip) as client:
            seen = await publish(http, event("pdfm", "seen"))
            assert (await client.recv())["id"] == seen[0]
        await publish(http, event("pdfm", "missed-1"), event("pdfm", "missed-2"))
        headers = {**SUB, "Last-Event-ID": seen[0]}
        with trio.fail_after(10):
            while True:  # the IP is released on A asynchronously
                try:
                    async with subscribe(b.port, "pdfm", headers, ip=ip) as back:
                        got = await messages(back, 3)
                        assert got == ["missed-1", "missed-2", "replay_complete"]
                        live = await publish(http, event("pdfm", "live"))
                        assert (await back.recv())["id"] == live[0]
                    break
                except Exception as exc:
                    if "409" not in repr(exc) and "ip_in_use" not in repr(exc):
                        raise
                    await trio.sleep(0.05)


async def test_redis_down_then_back(start_hubd: StartHubd, own_redis: RedisServer) -> None:
    a, b = await two_nodes(start_hubd, own_redis)
    async with (
        subscribe(a.port, "pdfm,health") as on_a,
        subscribe(b.port, "pdfm,health") as on_b,
        http_client(a.url) as http_a,
    ):
        before = await publish(http_a, event("pdfm", "before"))
        for client in (on_a, on_b):
            assert (await client.recv())["id"] == before[0]
        own_redis.stop()
        await a.wait_for_line(re.compile(r"backplane (lost|unavailable)"))
        response = await http_a.post("/v1/events", json=event("pdfm", "refused"), headers=ADMIN)
        body = assert_json_error(response, 503)
        assert body["error"] == "backplane_unavailable"
        ready = await http_a.get("/v1/ready")
        assert assert_json_error(ready, 503)["error"] == "not_ready"
        # Connected subscribers stay connected and are still answered.
        for client in (on_a, on_b):
            pong = await client.request({"event_type": "health", "message": "ping", "id": "p"})
            assert (pong["message"], pong["ref_id"]) == ("pong", "p")
        own_redis.start()
        with trio.fail_after(20):
            while True:
                response = await http_a.post(
                    "/v1/events", json=event("pdfm", "after"), headers=ADMIN
                )
                if response.status_code == 202:
                    break
                await trio.sleep(0.1)
        after = response.json()["id"]
        for client in (on_a, on_b):
            # Redis came back without its data: nobody can tell what it had numbered last,
            # so each node tells its subscribers that events may be missing, first.
            notice = await client.recv()
            assert (notice["message"], notice["body"]["reason"]) == (
                "events_dropped",
                "backplane_gap",
            )
            got = await client.recv()
            assert (got["message"], got["id"]) == ("after", after)
        assert (await http_a.get("/v1/ready")).status_code == 200
    for node in (a, b):
        assert "Traceback" not in node.output
