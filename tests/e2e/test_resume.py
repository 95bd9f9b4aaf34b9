"""Resuming after a disconnect, over real sockets: `?since=<id>` and `Last-Event-ID`
replay what was missed in publish order, then `replay_complete`, then live events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from ..helpers import ADMIN, EXTRA_CHANNEL, SUB, event
from .helpers import (
    SessionHubd,
    Subscriber,
    client_ip,
    rejected,
    rejection_error,
    subscribe,
    ws_connect,
)

pytestmark = pytest.mark.e2e


async def publish(http: httpx.AsyncClient, channel: str, message: str) -> str:
    response = await http.post("/v1/events", json=event(channel, message), headers=ADMIN)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


@asynccontextmanager
async def resume(port: int, channels: str, since: str, ip: str) -> AsyncIterator[Subscriber]:
    resource = "/v1/ws/subscribe?" + urlencode({"event_types": channels, "since": since})
    async with ws_connect(port, ip, resource, SUB) as ws:
        client = Subscriber(ws, ip)
        client.confirmation = await client.recv()
        yield client


async def replay_until_complete(client: Subscriber) -> tuple[dict[str, Any], list[str]]:
    done, before = await client.until(lambda e: e["message"] == "replay_complete")
    return done, [e["message"] for e in before]


async def test_resume_with_since_replays_missed_events_then_goes_live(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    ip = client_ip()
    async with subscribe(hub_server.port, "pdfm,orchestrator", ip=ip) as client:
        seen = await publish(http, "pdfm", "R-SEEN")
        await client.until(lambda e: e["id"] == seen)
    # Disconnected: these are missed.
    await publish(http, "pdfm", "R-MISSED-1")
    await publish(http, "orchestrator", "R-MISSED-2")
    await publish(http, EXTRA_CHANNEL, "R-NOT-SUBSCRIBED")
    await publish(http, "pdfm", "R-MISSED-3")
    async with resume(hub_server.port, "pdfm,orchestrator", seen, ip) as client:
        done, replayed = await replay_until_complete(client)
        mine = [m for m in replayed if m.startswith("R-")]
        assert mine == ["R-MISSED-1", "R-MISSED-2", "R-MISSED-3"]
        assert done["event_type"] == "global"
        assert done["body"]["complete"] is True
        assert done["body"]["replayed"] == len(replayed)
        live = await publish(http, "pdfm", "R-LIVE")
        _, between = await client.until(lambda e: e["id"] == live)
        assert [e["message"] for e in between if e["message"].startswith("R-")] == []


async def test_last_event_id_header_resumes_too(
    hub_server: SessionHubd, http: httpx.AsyncClient
) -> None:
    first = await publish(http, "orchestrator", "L-1")
    await publish(http, "orchestrator", "L-2")
    headers = {**SUB, "Last-Event-ID": first}
    async with subscribe(hub_server.port, "orchestrator", headers) as client:
        done, replayed = await replay_until_complete(client)
        assert [m for m in replayed if m.startswith("L-")] == ["L-2"]
        assert done["body"]["complete"] is True


async def test_unknown_event_id_says_incomplete(hub_server: SessionHubd) -> None:
    async with resume(hub_server.port, "pdfm", "0" * 64, client_ip()) as client:
        done, replayed = await replay_until_complete(client)
        assert replayed == []
        assert done["body"] == {"replayed": 0, "complete": False}


async def test_malformed_since_is_refused_with_json_400(hub_server: SessionHubd) -> None:
    resource = "/v1/ws/subscribe?" + urlencode({"event_types": "pdfm", "since": "yesterday"})
    exc = await rejected(hub_server.port, headers=SUB, resource=resource)
    body = rejection_error(exc, 400)
    assert body["error"] == "bad_request"
    assert "'yesterday'" in body["message"]
