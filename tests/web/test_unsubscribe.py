"""POST /v1/ws/unsubscribe in process: the 200 body, its effect on delivery, every
refusal. tests/e2e/test_unsubscribe.py keeps a smoke test over real sockets."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ..helpers import (
    ADMIN,
    EXTRA_CHANNEL,
    PUB,
    SUB,
    SUB2,
    SUB_KEY,
    assert_json_error,
    bearer,
    event,
)
from .asgi import InProcessHubd, Subscriber


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


async def delivered(
    http: httpx.AsyncClient, client: Subscriber, events: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """Publish `events` then a global marker; what `client` got before the marker (server
    notices such as `unsubscribed` left out), as (channel, message)."""
    for item in events:
        assert (await http.post("/v1/events", json=item, headers=ADMIN)).status_code == 202
    response = await http.post("/v1/events", json=event("global", "MARKER"), headers=ADMIN)
    marker = response.json()["id"]
    _, before = await client.until(lambda e: e["id"] == marker)
    return [(e["event_type"], e["message"]) for e in before if e["event_type"] != "global"]


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_unsubscribe_200_and_delivery_stops(
    hubd: InProcessHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with hubd.subscribe("pdfm,orchestrator,health") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm"]}, prefix=prefix
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {
            "client_id": client.client_id,
            "unsubscribed": ["pdfm"],
            "ignored": [],
            "subscriptions": ["orchestrator", "health", "global"],
        }
        got = await delivered(http, client, [event("pdfm", "GONE"), event("orchestrator", "KEPT")])
        assert got == [("orchestrator", "KEPT")]
        await client.send({"event_type": "health", "message": "ping", "id": "p"})
        pong, _ = await client.until(lambda e: e.get("ref_id") == "p")
        assert pong["message"] == "pong"


async def test_unsubscribe_is_trimmed_and_case_insensitive(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe(f"pdfm,{EXTRA_CHANNEL}") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": [" PDFM ", "pdfm"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["unsubscribed"] == ["pdfm"]
        assert response.json()["subscriptions"] == [EXTRA_CHANNEL, "global"]


async def test_global_listed_with_others_is_ignored_and_reported(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm,orchestrator") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["global", "pdfm"]}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["unsubscribed"] == ["pdfm"]
        assert body["subscriptions"] == ["orchestrator", "global"]
        assert "global" in body["ignored"]


async def test_removing_every_channel_leaves_global(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm,orchestrator") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["orchestrator", "pdfm"]}
        )
        assert response.status_code == 200, response.text
        assert response.json()["unsubscribed"] == ["orchestrator", "pdfm"]
        assert response.json()["subscriptions"] == ["global"]
        got = await delivered(http, client, [event("pdfm"), event("orchestrator", "NODE_UP")])
        assert got == []


async def test_channel_not_subscribed_is_not_reported_as_removed(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm") as client:
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
async def test_unsubscribe_400_changes_nothing(
    hubd: InProcessHubd, http: httpx.AsyncClient, content: bytes
) -> None:
    async with hubd.subscribe("pdfm") as client:
        response = await http.post(
            "/v1/ws/unsubscribe",
            content=content.replace(b"CID", client.client_id.encode()),
            headers={**SUB, "Content-Type": "application/json"},
        )
        assert_json_error(response, 400)
        assert "connection" not in response.headers  # the body was read
        assert await delivered(http, client, [event("pdfm", "STILL_HERE")]) == [
            ("pdfm", "STILL_HERE")
        ]


async def test_unsubscribe_400_unknown_channel_lists_valid_ones(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm", "nosuch"]}
        )
        error = assert_json_error(response, 400)
        assert error["error"] == "unknown_channel"
        assert "nosuch" in error["message"] and "orchestrator" in error["message"]
        assert await delivered(http, client, [event("pdfm", "STILL_HERE")]) == [
            ("pdfm", "STILL_HERE")
        ]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param(bearer("nope"), id="unknown-bearer"),
        pytest.param({"X-Api-Key": "nope"}, id="unknown-api-key"),
    ],
)
async def test_unsubscribe_401_says_the_connection_closes(
    hubd: InProcessHubd, http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    async with hubd.subscribe("pdfm") as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm"]}, headers
        )
        assert assert_json_error(response, 401)["error"] == "unauthorized"
        # Refused before the body was read.
        assert response.headers["connection"] == "close"


@pytest.mark.parametrize("other", [SUB2, SUB_KEY, PUB], ids=["sub2", "sub-key", "publisher"])
async def test_unsubscribe_403_other_principal(
    hubd: InProcessHubd, http: httpx.AsyncClient, other: dict[str, str]
) -> None:
    async with hubd.subscribe("pdfm", SUB) as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["pdfm"]}, other
        )
        assert assert_json_error(response, 403)["error"] == "forbidden"
        assert await delivered(http, client, [event("pdfm", "STILL_HERE")]) == [
            ("pdfm", "STILL_HERE")
        ]


async def test_owner_may_use_another_credential_kind(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm", SUB) as client:
        response = await http.post(
            "/v1/ws/unsubscribe?access_token=sub-token",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
        )
        assert response.status_code == 200, response.text


async def test_admin_may_unsubscribe_anyone(hubd: InProcessHubd, http: httpx.AsyncClient) -> None:
    async with hubd.subscribe("pdfm,orchestrator", SUB2) as client:
        response = await unsubscribe(
            http, {"client_id": client.client_id, "event_types": ["orchestrator"]}, ADMIN
        )
        assert response.status_code == 200, response.text
        assert response.json()["subscriptions"] == ["pdfm", "global"]


@pytest.mark.parametrize("headers", [SUB, ADMIN], ids=["subscriber", "admin"])
async def test_unsubscribe_404_unknown_client(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    client_id = "1c7c5c3e-8a8f-4d55-9a1e-2f7b8d9e0a11"
    response = await unsubscribe(http, {"client_id": client_id, "event_types": ["pdfm"]}, headers)
    error = assert_json_error(response, 404)
    assert error["error"] == "unknown_client"
    assert client_id in error["message"]


async def test_unsubscribe_404_after_client_left(
    hubd: InProcessHubd, http: httpx.AsyncClient
) -> None:
    async with hubd.subscribe("pdfm") as client:
        client_id = client.client_id
    response = await unsubscribe(http, {"client_id": client_id, "event_types": ["pdfm"]})
    assert_json_error(response, 404)
