"""Health, readiness, the admin views (stats, clients) and /metrics, in process.
tests/e2e/test_observability.py keeps a smoke test of each over real sockets, the counts
after real traffic, the separate metrics listener and the logs."""

from __future__ import annotations

import httpx
import pytest

from hubd import __version__

from ..helpers import (
    ADMIN,
    PROMETHEUS,
    PUB,
    PUB_TOKEN,
    SUB,
    SUB_KEY,
    TIMESTAMP,
    assert_json_error,
    bearer,
    event,
    find_client,
)
from .asgi import InProcessHubd
from .conftest import MakeHubd


def assert_admin_only(responses: dict[str, httpx.Response]) -> None:
    for who, response in responses.items():
        status = 401 if who in ("none", "unknown") else 403
        error = assert_json_error(response, status)
        assert error["error"] == ("unauthorized" if status == 401 else "forbidden"), who
        if status == 403:
            assert "admin" in error["message"], error


async def not_admins(http: httpx.AsyncClient, path: str) -> dict[str, httpx.Response]:
    return {
        "none": await http.get(path),
        "unknown": await http.get(path, headers=bearer("nope")),
        "sub": await http.get(path, headers=SUB),
        "sub-key": await http.get(path, headers=SUB_KEY),
        "pub": await http.get(path, headers=PUB),
        "pub-token": await http.get(path, headers=PUB_TOKEN),
    }


# -- health and readiness ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
@pytest.mark.parametrize("headers", [{}, bearer("nope")], ids=["none", "unknown"])
async def test_health_needs_no_credentials(
    http: httpx.AsyncClient, prefix: str, headers: dict[str, str]
) -> None:
    response = await http.get(f"{prefix}/health", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["status", "version", "uptime_seconds"]
    assert (body["status"], body["version"]) == ("ok", __version__)
    assert isinstance(body["uptime_seconds"], int | float) and body["uptime_seconds"] >= 0


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_ready_when_serving(http: httpx.AsyncClient, prefix: str) -> None:
    response = await http.get(f"{prefix}/ready")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"status": "ready", "backplane": "memory"}


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_not_ready_while_starting(hubd: InProcessHubd, prefix: str) -> None:
    hubd.ctx.ready = False
    async with hubd.http() as http:
        error = assert_json_error(await http.get(f"{prefix}/ready"), 503)
        assert error == {"error": "not_ready", "message": "the server is starting"}
        assert (await http.get(f"{prefix}/health")).status_code == 200


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_not_ready_while_draining(hubd: InProcessHubd, prefix: str) -> None:
    hubd.hub.draining = True
    async with hubd.http() as http:
        error = assert_json_error(await http.get(f"{prefix}/ready"), 503)
        assert error["error"] == "not_ready" and "draining" in error["message"]
        assert (await http.get(f"{prefix}/health")).json()["status"] == "ok"


# -- GET /v1/ws/stats ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/ws/stats", "/api/v1/ws/stats"])
async def test_stats_is_admin_only(http: httpx.AsyncClient, path: str) -> None:
    assert_admin_only(await not_admins(http, path))
    response = await http.get(path, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    stats = response.json()
    for key in ("connections", "published", "delivered", "dropped", "queued", "tasks"):
        assert isinstance(stats[key], int), key
    assert "pdfm" in stats["channels"] and "builds" in stats["channels"]
    assert isinstance(stats["delivery_latency"]["count"], int)
    response = await http.get(path, params={"access_token": "admin-token"})
    assert response.status_code == 200, response.text


async def test_stats_count_traffic(hubd: InProcessHubd, http: httpx.AsyncClient) -> None:
    async with hubd.subscribe("pdfm") as a, hubd.subscribe("pdfm"):
        response = await http.post("/v1/events", json=[event(), event()], headers=PUB)
        assert response.status_code == 202
        await a.recv()
        await a.recv()
        stats = (await http.get("/v1/ws/stats", headers=ADMIN)).json()
        assert stats["connections"] == 2
        assert stats["published"] == 2


# -- GET /v1/ws/clients --------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_clients_view_lists_a_connected_client(
    hubd: InProcessHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with hubd.subscribe("pdfm,health", SUB_KEY) as client:
        pong = await client.request({"event_type": "health", "message": "ping", "id": "p"})
        assert pong["message"] == "pong"
        response = await http.get(f"{prefix}/ws/clients", headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        view = find_client(response.json(), client.client_id)
        assert list(view) == [
            "client_id",
            "principal",
            "ip",
            "connected_at",
            "last_seen",
            "subscriptions",
            "batch",
            "queue_depth",
            "queue_capacity",
            "dropped",
            "closing",
        ]
        assert view["principal"] == "sub-key"
        assert view["ip"] == client.ip
        assert view["connected_at"] == client.confirmation["timestamp"]
        assert TIMESTAMP.match(view["last_seen"]), view
        assert view["subscriptions"] == ["pdfm", "health", "global"]
        assert (view["queue_depth"], view["dropped"], view["batch"], view["closing"]) == (
            0,
            0,
            False,
            False,
        )
        assert isinstance(view["queue_capacity"], int) and view["queue_capacity"] > 0

        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
            headers=SUB_KEY,
        )
        assert response.status_code == 200, response.text
        response = await http.get(f"{prefix}/ws/clients", params={"access_token": "admin-token"})
        view = find_client(response.json(), client.client_id)
        assert view["subscriptions"] == ["health", "global"]
    body = (await http.get(f"{prefix}/ws/clients", headers=ADMIN)).json()
    assert body == {"count": 0, "clients": []}


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_clients_view_is_admin_only(http: httpx.AsyncClient, prefix: str) -> None:
    assert_admin_only(await not_admins(http, f"{prefix}/ws/clients"))


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_is_admin_only_on_the_main_listener(http: httpx.AsyncClient) -> None:
    assert_admin_only(await not_admins(http, "/metrics"))
    for kwargs in ({"headers": ADMIN}, {"params": {"access_token": "admin-token"}}):
        response = await http.get("/metrics", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == PROMETHEUS
        assert f'hubd_build_info{{version="{__version__}"}} 1.0' in response.text
        assert "hubd_connections_open " in response.text


async def test_metrics_counts_requests_by_route_and_status(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    assert (await http.post("/v1/events", json=event(), headers=PUB)).status_code == 202
    assert (await http.post("/v1/events", json=event(), headers={})).status_code == 401
    assert (await http.get("/nope")).status_code == 404
    text = (await http.get("/metrics", headers=ADMIN)).text
    assert 'hubd_http_requests_total{route="/v1/events",status="202"} 1.0' in text
    assert 'hubd_http_requests_total{route="/v1/events",status="401"} 1.0' in text
    assert 'hubd_http_requests_total{route="other",status="404"} 1.0' in text


async def test_metrics_disabled_is_404(make_hubd: MakeHubd) -> None:
    hubd = make_hubd(metrics={"enabled": False})
    async with hubd.http() as http:
        error = assert_json_error(await http.get("/metrics", headers=ADMIN), 404)
        assert error["error"] == "not_found"
        assert "metrics.enabled" in error["message"]


async def test_metrics_listener_serves_metrics_only_without_credentials(
    hubd: InProcessHubd,
) -> None:
    """Requests whose server address is the metrics listener's (`metrics.listen`)."""
    hubd.ctx.metrics_address = ("127.0.0.1", 9109)
    async with hubd.http(base_url="http://127.0.0.1:9109") as listener:
        for headers in ({}, bearer("nope"), SUB):
            response = await listener.get("/metrics", headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == PROMETHEUS
        head = await listener.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        for path in ["/", "/v1/health", "/v1/ready", "/v1/ws/stats", "/metricsx"]:
            error = assert_json_error(await listener.get(path, headers=ADMIN), 404)
            assert error["error"] == "not_found"
            assert "/metrics" in error["message"]
        assert_json_error(await listener.post("/v1/events", json=event(), headers=PUB), 404)
    assert hubd.hub.stats()["published"] == 0
    rejection = await hubd.rejected(
        "/v1/ws/subscribe?event_types=pdfm", SUB, server=("127.0.0.1", 9109)
    )
    assert rejection.error(404)["error"] == "not_found"
    # The main listener still wants an admin.
    async with hubd.http() as main:
        assert_json_error(await main.get("/metrics"), 401)
