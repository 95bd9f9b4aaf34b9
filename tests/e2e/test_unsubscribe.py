"""POST /v1/ws/unsubscribe over real sockets: the 200 and its effect on what a real
WebSocket client receives, on both path prefixes. Every rule and refusal is in
tests/web/test_unsubscribe.py."""

from __future__ import annotations

import httpx
import pytest

from ..helpers import ADMIN, SUB, event
from .helpers import SessionHubd, subscribe

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_unsubscribe_200_and_delivery_stops(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with subscribe(hub_server.port, "pdfm,orchestrator,health") as client:
        response = await http.post(
            f"{prefix}/ws/unsubscribe",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
            headers=SUB,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["client_id"] == client.client_id
        assert body["unsubscribed"] == ["pdfm"]
        assert body["subscriptions"] == ["orchestrator", "health", "global"]
        for item in (event("pdfm", "GONE"), event("orchestrator", "KEPT")):
            assert (await http.post("/v1/events", json=item, headers=ADMIN)).status_code == 202
        response = await http.post("/v1/events", json=event("global", "MARKER"), headers=ADMIN)
        assert response.status_code == 202, response.text
        marker_id = response.json()["id"]
        _, before = await client.until(lambda e: e["id"] == marker_id)
        got = [(e["event_type"], e["message"]) for e in before if e["event_type"] != "global"]
        assert got == [("orchestrator", "KEPT")]
        # Health is still subscribed: ping answers with a pong.
        await client.send({"event_type": "health", "message": "ping", "id": "p"})
        pong, _ = await client.until(lambda e: e.get("ref_id") == "p")
        assert pong["message"] == "pong"
