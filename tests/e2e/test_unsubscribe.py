"""POST /v1/ws/unsubscribe: the 200 body, its effect on delivery, and every refusal."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import EXTRA_CHANNEL
from .helpers import (
    ADMIN,
    PUB,
    SUB,
    SUB2,
    SUB_KEY,
    SessionHubd,
    Subscriber,
    assert_json_error,
    bearer,
    event,
    subscribe,
)

pytestmark = pytest.mark.e2e


async def unsubscribe(
    http: httpx.AsyncClient,
    payload: Any,
    headers: dict[str, str] | None = None,
    *,
    prefix: str = "/v1",
) -> httpx.Response:
    return await http.post(
        f"{prefix}/ws/unsubscribe", json=payload, headers=SUB if headers is None else headers
    )


async def published_before_marker(
    http: httpx.AsyncClient, client: Subscriber, events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Publish `events` then a global marker; return what `client` got before the marker
    (server notices such as `unsubscribed` excluded)."""
    for item in events:
        response = await http.post("/v1/events", json=item, headers=ADMIN)
        assert response.status_code == 202, response.text
    response = await http.post("/v1/events", json=event("global", "MARKER"), headers=ADMIN)
    assert response.status_code == 202, response.text
    marker_id = response.json()["id"]
    _, before = await client.until(lambda e: e["id"] == marker_id)
    return [e for e in before if e["event_type"] != "global"]


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_unsubscribe_200_and_delivery_stops(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with subscribe(hub_server.port, "pdfm,orchestrator,health") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm"]}, prefix=prefix
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["client_id"] == client.client_id
        assert body["unsubscribed"] == ["pdfm"]
        assert body["subscriptions"] == ["orchestrator", "health", "global"]
        got = await published_before_marker(
            http, client, [event("pdfm", "GONE"), event("orchestrator", "KEPT")]
        )
        assert [(e["event_type"], e["message"]) for e in got] == [("orchestrator", "KEPT")]
        # Health is still subscribed: ping answers with a pong.
        await client.send({"event_type": "health", "message": "ping", "id": "p"})
        pong, _ = await client.until(lambda e: e.get("ref_id") == "p")
        assert pong["message"] == "pong"


async def test_unsubscribe_is_trimmed_and_case_insensitive(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, f"pdfm,{EXTRA_CHANNEL}") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": [" PDFM ", "pdfm"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["unsubscribed"] == ["pdfm"]
        assert response.json()["subscriptions"] == [EXTRA_CHANNEL, "global"]


async def test_global_listed_with_others_is_ignored_and_reported(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm,orchestrator") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["global", "pdfm"]}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["unsubscribed"] == ["pdfm"]
        assert body["subscriptions"] == ["orchestrator", "global"]
        assert "global" in body["ignored"]


async def test_removing_every_channel_leaves_global(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm,orchestrator") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["orchestrator", "pdfm"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["unsubscribed"] == ["orchestrator", "pdfm"]
        assert response.json()["subscriptions"] == ["global"]
        got = await published_before_marker(
            http, client, [event("pdfm"), event("orchestrator", "NODE_UP")]
        )
        assert got == []


async def test_channel_not_subscribed_is_not_reported_as_removed(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["orchestrator"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["unsubscribed"] == []
        assert response.json()["subscriptions"] == ["pdfm", "global"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"event_types": ["pdfm"]}', id="missing-client_id"),
        pytest.param(b'{"client_id": "CID"}', id="missing-event_types"),
        pytest.param(b'{"client_id": "CID", "event_types": "pdfm"}', id="event_types-string"),
        pytest.param(b'{"client_id": 5, "event_types": ["pdfm"]}', id="client_id-number"),
        pytest.param(b'{"client_id": "CID", "event_types": []}', id="empty-list"),
        pytest.param(b'{"client_id": "CID", "event_types": ["nosuch"]}', id="unknown-channel"),
        pytest.param(b'{"client_id": "CID", "event_types": ["global"]}', id="only-global"),
        pytest.param(b'{"client_id": "CID", "event_types": [" GLOBAL"]}', id="only-global-case"),
    ],
)
async def test_unsubscribe_400(
    hub_server: SessionHubd, http: httpx.AsyncClient, content: bytes
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        response = await http.post(
            "/v1/ws/unsubscribe",
            content=content.replace(b"CID", client.client_id.encode()),
            headers={**SUB, "Content-Type": "application/json"},
        )
        assert_json_error(response, 400)
        got = await published_before_marker(http, client, [event("pdfm", "STILL_HERE")])
        assert [e["message"] for e in got] == ["STILL_HERE"]


async def test_unsubscribe_400_unknown_channel_lists_valid_ones(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm", "nosuch"]}
        )
        message = assert_json_error(response, 400)["message"]
        assert "nosuch" in message and "orchestrator" in message
        got = await published_before_marker(http, client, [event("pdfm", "STILL_HERE")])
        assert [e["message"] for e in got] == ["STILL_HERE"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param(bearer("nope"), id="unknown-bearer"),
        pytest.param({"X-Api-Key": "nope"}, id="unknown-api-key"),
    ],
)
async def test_unsubscribe_401(
    hub_server: SessionHubd, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    async with subscribe(hub_server.port, "pdfm") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm"]}, headers
        )
        assert_json_error(response, 401)


@pytest.mark.parametrize("other", [SUB2, SUB_KEY, PUB], ids=["sub2", "sub-key", "publisher"])
async def test_unsubscribe_403_other_principal(
    hub_server: SessionHubd, http: httpx.AsyncClient, other: dict[str, str]
) -> None:
    async with subscribe(hub_server.port, "pdfm", SUB) as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm"]}, other
        )
        assert_json_error(response, 403)
        got = await published_before_marker(http, client, [event("pdfm", "STILL_HERE")])
        assert [e["message"] for e in got] == ["STILL_HERE"]


async def test_owner_may_use_another_credential_kind(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    """Ownership is by principal: the owner's access_token works as well as its header."""
    async with subscribe(hub_server.port, "pdfm", SUB) as client:
        response = await http.post(
            "/v1/ws/unsubscribe?access_token=sub-token",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
        )
        assert response.status_code == 200, response.text


async def test_admin_may_unsubscribe_anyone(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    async with subscribe(hub_server.port, "pdfm,orchestrator", SUB2) as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["orchestrator"]}, ADMIN
        )
        assert response.status_code == 200, response.text
        assert response.json()["subscriptions"] == ["pdfm", "global"]


async def test_unsubscribe_404_unknown_client(http: httpx.AsyncClient) -> None:
    response = await unsubscribe(
        http, {"client_id": "1c7c5c3e-8a8f-4d55-9a1e-2f7b8d9e0a11", "event_types": ["pdfm"]}
    )
    assert_json_error(response, 404)
    response = await unsubscribe(
        http, {"client_id": "1c7c5c3e-8a8f-4d55-9a1e-2f7b8d9e0a11", "event_types": ["pdfm"]}, ADMIN
    )
    assert_json_error(response, 404)


async def test_unsubscribe_404_after_client_left(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    ip_and_id: list[str] = []
    async with subscribe(hub_server.port, "pdfm") as client:
        ip_and_id += [client.ip, client.client_id]
    # The slot is free again, so the session is gone too.
    async with subscribe(hub_server.port, "pdfm", ip=ip_and_id[0]):
        response = await unsubscribe(http, {"client_id": ip_and_id[1], "event_types": ["pdfm"]})
        assert_json_error(response, 404)
