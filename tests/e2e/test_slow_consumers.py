"""A subscriber that stops reading never holds the publisher back: with `drop_oldest` it
loses the oldest events and is told how many (`events_dropped`); with `disconnect` it is
closed with 1013."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from ..helpers import PUB, event
from .conftest import StartHubd
from .helpers import Subscriber, client_ip, http_client, subscribe

pytestmark = pytest.mark.e2e

QUEUE_SIZE = 8
EVENT_PAD = "x" * 50_000  # large events fill the socket buffers quickly
BATCH = 20
# 10 MB: well over what the kernel buffers (the client's receive buffer is shrunk, the
# server's send buffer tops out at a few MB) plus the queue can hold.
TOTAL = 200
RCVBUF = 32 * 1024


async def flood(http: httpx.AsyncClient) -> None:
    """Publish TOTAL large pdfm events (seq 0..TOTAL-1); every request must get 202."""
    for start in range(0, TOTAL, BATCH):
        batch = [
            event("pdfm", "BIG", body={"seq": seq, "pad": EVENT_PAD})
            for seq in range(start, start + BATCH)
        ]
        response = await http.post("/v1/events", json=batch, headers=PUB)
        assert response.status_code == 202, response.text


def slow_hub(policy: str) -> dict[str, Any]:
    return {"queue_size": QUEUE_SIZE, "slow_consumer": policy, "max_publish_bytes": 4_000_000}


async def test_drop_oldest_reports_events_dropped(start_hubd: StartHubd) -> None:
    server = await start_hubd(hub=slow_hub("drop_oldest"))
    async with (
        http_client(server.url) as http,
        subscribe(server.port, "pdfm", rcvbuf=RCVBUF) as slow,
    ):
        # The client reads nothing while everything is published.
        with trio.fail_after(60):
            await flood(http)
        # Now it catches up.
        seqs: list[int] = []
        notices: list[dict[str, Any]] = []
        dropped = 0
        with trio.move_on_after(30):
            while not (seqs and seqs[-1] == TOTAL - 1 and len(seqs) + dropped >= TOTAL):
                got = await slow.recv()
                if got["message"] == "events_dropped":
                    notices.append(got)
                    dropped += got["body"]["dropped"]
                else:
                    assert got["event_type"] == "pdfm", got
                    seqs.append(got["body"]["seq"])
        assert notices, f"no events_dropped notice after {len(seqs)} of {TOTAL} events"
        for notice in notices:
            assert notice["event_type"] == "global"
            assert list(notice["body"]) == ["dropped"]
            assert isinstance(notice["body"]["dropped"], int) and notice["body"]["dropped"] > 0
        # The newest events survive, in order; every missing one was reported.
        assert seqs[-1] == TOTAL - 1
        assert seqs == sorted(set(seqs))
        assert len(seqs) + dropped == TOTAL, (len(seqs), dropped)
        # The connection is still fine.
        assert (await slow.request({"event_type": "system", "message": "client-id"}))[
            "message"
        ] == "error"


async def test_disconnect_policy_closes_slow_client_1013(start_hubd: StartHubd) -> None:
    server = await start_hubd(hub=slow_hub("disconnect"))
    ip = client_ip()
    async with (
        http_client(server.url) as http,
        subscribe(server.port, "pdfm", ip=ip, rcvbuf=RCVBUF) as slow,
    ):
        with trio.fail_after(60):
            await flood(http)
        reason = await slow.closed(within=30)
        assert reason.code == 1013, reason
    # Its slot is released: the same client may come back.
    async with subscribe(server.port, "pdfm", ip=ip) as again:
        assert again.subscriptions == ["pdfm", "global"]


async def test_disconnect_policy_spares_a_client_that_keeps_up(start_hubd: StartHubd) -> None:
    """Events spread over time never overflow a reading client's queue."""
    server = await start_hubd(hub=slow_hub("disconnect"))
    async with http_client(server.url) as http, subscribe(server.port, "pdfm") as fast:
        for seq in range(50):
            response = await http.post(
                "/v1/events", json=event("pdfm", "SMALL", body=seq), headers=PUB
            )
            assert response.status_code == 202, response.text
            assert (await fast.recv())["body"] == seq
        await assert_open(fast)


async def assert_open(client: Subscriber) -> None:
    reply = await client.request({"event_type": "health", "message": "ping", "id": "x"})
    assert reply["ref_id"] == "x"
