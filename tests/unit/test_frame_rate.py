"""The per-connection client frame rate limit: a token bucket refilled at
`hub.max_client_frames_per_second`, holding at most `hub.client_frames_burst`. Over
`MemoryTransport`, on trio's virtual clock (frames sent without a sleep in between arrive
at the same virtual instant)."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from hubd.core.close_codes import CLOSE_POLICY
from hubd.core.hub import Hub
from hubd.core.transport import Closed

from .conftest import SUBSCRIBER, Client, connect, make_hub

RATE = 5.0  # frames per second
BURST = 10
IDLE = 60.0
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def limited_hub(**options: Any) -> Hub:
    settings: dict[str, Any] = {
        "max_client_frames_per_second": RATE,
        "client_frames_burst": BURST,
        "idle_timeout": IDLE,
    }
    return make_hub(**(settings | options))


def ping(ref: str) -> dict[str, str]:
    return {"event_type": "health", "message": "ping", "id": ref}


async def send_pings(client: Client, prefix: str, n: int) -> None:
    for i in range(n):
        await client.send(ping(f"{prefix}{i}"))


async def written(client: Client) -> list[dict[str, Any] | Closed]:
    """Everything the server has written so far, once every task is blocked."""
    await trio.testing.wait_all_tasks_blocked()
    out: list[dict[str, Any] | Closed] = []
    while True:
        try:
            item = client.transport.to_client.receive_nowait()
        except trio.WouldBlock:
            return out
        out.append(item if isinstance(item, Closed) else json.loads(item))


def pongs(items: list[dict[str, Any] | Closed]) -> list[str]:
    return [i["ref_id"] for i in items if isinstance(i, dict) and i["message"] == "pong"]


def errors(items: list[dict[str, Any] | Closed]) -> list[dict[str, Any]]:
    return [i for i in items if isinstance(i, dict) and i["message"] == "error"]


def assert_rate_error(error: dict[str, Any], client: Client) -> None:
    assert (error["event_type"], error["message"]) == ("global", "error")
    assert error["client_id"] == client.client_id
    assert HEX64.match(error["ref_id"])  # the frame is not decoded: a fresh ref_id
    text = error["body"]["error"]
    assert "rate limit" in text
    assert "max_client_frames_per_second=5" in text
    assert "client_frames_burst=10" in text


async def test_frames_within_the_burst_and_the_rate_are_all_answered(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = limited_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    await send_pings(client, "burst", BURST)
    assert pongs(await written(client)) == [f"burst{i}" for i in range(BURST)]
    for i in range(40):  # 4 per second, under the rate of 5
        await trio.sleep(0.25)
        await client.send(ping(f"steady{i}"))
        assert pongs(await written(client)) == [f"steady{i}"]
    assert hub.frame_errors == 0
    assert client.session.close_code is None


async def test_a_burst_over_the_limit_gets_one_error_event_and_no_replies(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = limited_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "health,system")
    await send_pings(client, "p", BURST + 5)
    await client.send({"event_type": "system", "message": "client-id"})  # not answered either
    items = await written(client)
    assert pongs(items) == [f"p{i}" for i in range(BURST)]
    (error,) = errors(items)
    assert items[BURST] == error  # right after the last answered frame
    assert len(items) == BURST + 1
    assert_rate_error(error, client)
    assert hub.frames_in == BURST + 6
    assert hub.frame_errors == 6
    assert client.session.close_code is None


@pytest.mark.parametrize("over", [BURST, BURST + 1])
async def test_a_client_that_keeps_sending_over_the_limit_is_closed_with_1008(
    nursery: trio.Nursery, autojump_clock: MockClock, over: int
) -> None:
    """The first frame over the limit gets the error; when `client_frames_burst` more
    come over the limit before the bucket is full again, the connection is closed."""
    hub = limited_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    await send_pings(client, "p", BURST + over)
    items = await written(client)
    assert pongs(items) == [f"p{i}" for i in range(BURST)]
    assert len(errors(items)) == 1
    if over == BURST:
        assert client.session.close_code is None
        assert not any(isinstance(i, Closed) for i in items)
        return
    assert items[-1] == Closed(CLOSE_POLICY, "client frame rate limit exceeded")
    assert len(items) == BURST + 2
    await client.ended()
    assert hub.closed == {"1008": 1}


async def test_a_steady_rate_over_the_limit_is_closed_with_1008(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Twice the allowed rate, evenly spread: half the frames find a token and are
    answered, the bucket never fills up again, and the frames over the limit add up."""
    hub = limited_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    start = trio.current_time()
    items: list[dict[str, Any] | Closed] = []
    for i in range(200):
        await trio.sleep(1 / (2 * RATE))
        await client.send(ping(f"p{i}"))
        items += await written(client)
        if client.session.close_code is not None:
            break
    assert items[-1] == Closed(CLOSE_POLICY, "client frame rate limit exceeded")
    assert len(errors(items)) == 1
    # Full bucket spent after ~2 s, then one frame over the limit per 0.2 s: closed at the
    # 11th of those, ~4.2 s in.
    assert 3.5 < trio.current_time() - start < 5.0
    await client.ended()


async def test_after_a_quiet_period_the_bucket_refills(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = limited_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    await send_pings(client, "a", BURST + BURST)  # BURST answered, BURST over: not closed
    items = await written(client)
    assert pongs(items) == [f"a{i}" for i in range(BURST)]
    assert len(errors(items)) == 1
    # Half a refill: half a burst is answered again.
    await trio.sleep(BURST / RATE / 2)
    await send_pings(client, "b", BURST // 2)
    assert pongs(await written(client)) == [f"b{i}" for i in range(BURST // 2)]
    # A full refill: a whole burst is answered, and a new run over the limit is a new
    # episode (its own error event, its own allowance before 1008).
    await trio.sleep(BURST / RATE)
    await send_pings(client, "c", BURST + BURST)
    items = await written(client)
    assert pongs(items) == [f"c{i}" for i in range(BURST)]
    assert len(errors(items)) == 1
    assert client.session.close_code is None


async def test_frames_over_the_limit_still_count_as_heartbeats(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    idle = 10.0
    # One token per 100 s: after the burst, every frame in this test is over the limit.
    hub = limited_hub(idle_timeout=idle, max_client_frames_per_second=0.01)
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    start = trio.current_time()
    await send_pings(client, "a", BURST)
    assert len(pongs(await written(client))) == BURST
    for i in range(BURST):  # within the allowance before 1008, each before the deadline
        await trio.sleep(idle * 0.8)
        await client.send(ping(f"late{i}"))
    assert pongs(await written(client)) == []
    assert trio.current_time() - start > 5 * idle  # long past the last pong's deadline
    assert client.session.close_code is None
    last = trio.current_time()
    closed = await client.expect_close()
    assert closed == Closed(4408, "idle timeout")
    assert trio.current_time() - last == pytest.approx(idle, abs=1e-6)


async def test_a_reload_applies_to_open_connections(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = limited_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    await send_pings(client, "a", BURST + 1)
    assert len(pongs(await written(client))) == BURST
    faster = msgspec.structs.replace(hub.settings, max_client_frames_per_second=1000.0)
    assert hub.reconfigure(faster, hub.limits) == []
    await trio.sleep(0.01)  # 10 tokens at the new rate
    await send_pings(client, "b", BURST)
    assert pongs(await written(client)) == [f"b{i}" for i in range(BURST)]
