"""`tasks` in `GET /v1/ws/stats` against a real `hubd serve`: the daemon's trio tasks rise
with open connections and fall back to where they were once the connections are gone
(what the soak, `python -m bench.soak`, watches for leaks)."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack

import pytest
import trio

from ..helpers import ADMIN
from .conftest import StartHubd
from .helpers import WAIT, http_client, subscribe

pytestmark = pytest.mark.e2e


async def test_stats_count_tasks_and_they_return_after_connections_end(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd()
    async with http_client(server.url) as http:

        async def stats() -> tuple[int, int]:
            response = await http.get("/v1/ws/stats", headers=ADMIN)
            assert response.status_code == 200, response.text
            figures = response.json()
            assert isinstance(figures["tasks"], int), figures
            # What Python objects hold, for a soak to tell a leak from allocator settling.
            assert isinstance(figures["allocated_blocks"], int), figures
            assert figures["allocated_blocks"] > 10_000, figures
            return figures["tasks"], figures["connections"]

        before, connections = await stats()
        assert connections == 0
        assert before > 0
        # The same answer twice over the same keep-alive connection: nothing transient.
        assert (await stats())[0] == before

        async with AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(subscribe(server.port, "pdfm")) for _ in "abc"]
            during, connections = await stats()
            assert connections == 3
            assert during >= before + len(subs)  # every connection holds at least one task
            ips = [sub.ip for sub in subs]

        for ip in ips:
            await server.wait_for_line(re.compile(rf"closed client_id=\S+ ip={re.escape(ip)}\b"))
        # A connection's last tasks end right after its `closed` line: wait for them.
        with trio.fail_after(WAIT):
            while True:
                after, connections = await stats()
                if after == before:
                    break
                await trio.sleep(0.05)
        assert connections == 0
