"""The client frame rate limit on a real daemon: the error event and the 1008 close reach a
real WebSocket client (the rules themselves are in tests/unit/test_frame_rate.py)."""

from __future__ import annotations

import pytest

from .conftest import StartHubd
from .helpers import subscribe

pytestmark = pytest.mark.e2e

BURST = 5


async def test_a_client_flooding_frames_gets_one_error_then_1008(start_hubd: StartHubd) -> None:
    # One frame per 100 s: nothing refills while the test runs.
    server = await start_hubd(
        hub={"max_client_frames_per_second": 0.01, "client_frames_burst": BURST}
    )
    async with subscribe(server.port, "health") as client:
        for i in range(BURST + 1 + BURST):
            await client.send({"event_type": "health", "message": "ping", "id": f"p{i}"})
        replies = [await client.recv() for _ in range(BURST + 1)]
        assert [r["ref_id"] for r in replies[:BURST]] == [f"p{i}" for i in range(BURST)]
        error = replies[BURST]
        assert (error["event_type"], error["message"]) == ("global", "error")
        assert "max_client_frames_per_second=0.01" in error["body"]["error"]
        reason = await client.closed()
        assert (reason.code, reason.reason) == (1008, "client frame rate limit exceeded")
