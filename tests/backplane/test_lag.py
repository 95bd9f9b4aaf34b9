"""A node that cannot keep up with the cluster: beyond `backplane.max_lag` it drops its
Pub/Sub subscription and catches up from the streams, and its subscribers are told what
the streams no longer hold; so are they when Redis comes back without its data.

A slow node is made by giving each event it receives a fixed CPU cost (the synchronous
fan-out to many connections that makes a real node slow); the backlog is then real: Redis
keeps sending while the node works through it."""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

import pytest
import trio

from hubd.backplane import join, publish_through
from hubd.backplane.redis import RedisBackplane
from hubd.core.errors import HubError
from hubd.core.session import Session
from hubd.settings import BackplaneSettings

from ..redis_server import RedisServer
from .test_contract import ADMIN, ALICE, WAIT, fresh_ip, make_hub

_prefixes = itertools.count(1)
# CPU time each event costs the slow node: 2000 events take it about 4 s.
COST = 0.002
BURST = 2000
MAX_LAG = 200


def settings(server: RedisServer, max_lag: int = MAX_LAG) -> BackplaneSettings:
    return BackplaneSettings(
        kind="redis",
        url=server.url,
        prefix=f"lag{next(_prefixes)}",
        lease_seconds=3.0,
        max_lag=max_lag,
    )


async def started(nursery: trio.Nursery, node: RedisBackplane) -> RedisBackplane:
    await nursery.start(node.run)
    with trio.fail_after(WAIT):
        await node.wait_healthy()
    return node


def slow_down(monkeypatch: pytest.MonkeyPatch, node: RedisBackplane) -> None:
    deliver = node._deliver

    def slow(data: bytes) -> None:
        end = time.perf_counter() + COST
        while time.perf_counter() < end:  # CPU spent in the fan-out, as on a busy node
            pass
        deliver(data)

    monkeypatch.setattr(node, "_deliver", slow)


def frames(session: Session) -> list[dict[str, Any]]:
    return [json.loads(f.payload) for f in session.mailbox.take(100_000)]


async def burst(node: RedisBackplane, n: int, start: int = 0) -> list[str]:
    """Publish E<start>... E<start + n - 1> on pdfm, 1000 (the most a request holds) at once."""
    ids: list[str] = []
    for first in range(start, start + n, 1000):
        events = [
            {"event_type": "pdfm", "message": f"E{k}"}
            for k in range(first, min(first + 1000, start + n))
        ]
        ids += (await publish_through(node, ADMIN, json.dumps(events).encode())).ids
    return ids


async def received(session: Session, node: RedisBackplane, last_id: str) -> list[dict[str, Any]]:
    """Everything the session is sent until the event `last_id` (what the node caught up
    and what it delivered live), in order."""
    got: list[dict[str, Any]] = []
    with trio.fail_after(WAIT * 3):
        while not got or got[-1].get("id") != last_id:
            got += frames(session)
            await trio.sleep(0.05)  # polling the mailbox the node fills
    return got


async def test_a_node_too_far_behind_cuts_off_and_catches_up_without_a_loss(
    nursery: trio.Nursery,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = settings(redis_server)
    a = await started(nursery, RedisBackplane(make_hub(history_size=5000), config))
    b = await started(nursery, RedisBackplane(make_hub(history_size=5000, queue_size=8192), config))
    session = await join(b, ALICE, fresh_ip(), "pdfm")
    frames(session)  # the confirmation
    slow_down(monkeypatch, b)
    caplog.set_level(logging.WARNING, "hubd.backplane")
    ids = await burst(a, BURST)
    got = await received(session, b, ids[-1])
    assert b.lag_cutoffs >= 1
    # Every event exactly once, in order, and nothing said to be missing.
    assert [f["id"] for f in got] == ids
    assert [f["message"] for f in got] == [f"E{k}" for k in range(BURST)]
    cutoffs = [r for r in caplog.records if "behind the cluster" in r.getMessage()]
    # (Node A shares this process, and so the slow node's CPU: it may fall behind too.)
    assert len(cutoffs) == a.lag_cutoffs + b.lag_cutoffs
    assert all(r.levelno == logging.WARNING for r in cutoffs)
    assert f"more than backplane.max_lag={MAX_LAG}" in cutoffs[0].getMessage()
    # The node is back to normal: live events come through Pub/Sub again.
    monkeypatch.undo()
    live = await burst(a, 1, BURST)
    assert [f["id"] for f in await received(session, b, live[0])] == live
    with trio.fail_after(WAIT):
        while b.lag:  # noqa: ASYNC110 - the node measures it every LAG_CHECK seconds
            await trio.sleep(0.05)


async def test_when_the_streams_no_longer_hold_what_a_node_missed_its_subscribers_are_told(
    nursery: trio.Nursery, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(redis_server)
    a = await started(nursery, RedisBackplane(make_hub(history_size=50), config))
    b = await started(nursery, RedisBackplane(make_hub(history_size=50, queue_size=8192), config))
    told = await join(b, ALICE, fresh_ip(), "pdfm")
    other = await join(b, ALICE, fresh_ip(), "orchestrator")
    for session in (told, other):
        frames(session)
    slow_down(monkeypatch, b)
    ids = await burst(a, BURST)
    got = await received(told, b, ids[-1])
    assert b.lag_cutoffs >= 1
    notices = [n for n, f in enumerate(got) if f["message"] == "events_dropped"]
    assert notices, "the subscriber was not told"
    first = notices[0]
    notice = got[first]
    assert notice["body"]["reason"] == "backplane_gap"
    assert notice["body"]["dropped"] >= 1
    assert (notice["event_type"], notice["client_id"]) == ("global", told.client_id)
    # In order: what came before the hole, the notice, then what the streams still held.
    before = [f["id"] for f in got[:first]]
    assert before == ids[: len(before)]
    after = [f["id"] for f in got[first + 1 :] if f["message"] != "events_dropped"]
    assert after == ids[-len(after) :]
    assert len(before) + len(after) < BURST  # something was lost, and said so
    assert b.hub.missed_notices["backplane_gap"] >= 1
    # A connection of another channel lost nothing and is told nothing.
    assert frames(other) == []


async def test_without_history_a_cutoff_is_a_loss_and_is_said_to_be(
    nursery: trio.Nursery, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = settings(redis_server)
    a = await started(nursery, RedisBackplane(make_hub(history_size=0), config))
    b = await started(nursery, RedisBackplane(make_hub(history_size=0, queue_size=8192), config))
    session = await join(b, ALICE, fresh_ip(), "orchestrator")
    frames(session)
    slow_down(monkeypatch, b)
    await burst(a, BURST)
    got: list[dict[str, Any]] = []
    with trio.fail_after(WAIT * 3):
        while not got:  # the node has cut off, subscribed again and told its subscribers
            got = frames(session)
            await trio.sleep(0.05)  # polling the mailbox the node fills
    monkeypatch.undo()
    # Not one of its events was lost (it subscribes to another channel), but nothing was
    # kept to tell which were: every connection is told.
    assert b.lag_cutoffs >= 1
    assert [f["message"] for f in got] == ["events_dropped"]
    assert got[0]["body"]["reason"] == "backplane_gap"
    assert got[0]["body"]["dropped"] >= 1
    # Live events come through again once it is subscribed.
    marker = await publish_through(a, ADMIN, b'{"event_type":"orchestrator","message":"m"}')
    assert [f["message"] for f in await received(session, b, marker.ids[0])] == ["m"]


async def test_redis_restarted_without_its_data_live_subscribers_are_told(
    nursery: trio.Nursery, own_redis: RedisServer
) -> None:
    config = settings(own_redis, max_lag=10_000)
    a = await started(nursery, RedisBackplane(make_hub(), config))
    b = await started(nursery, RedisBackplane(make_hub(), config))
    session = await join(b, ALICE, fresh_ip(), "pdfm")
    frames(session)
    old = await burst(a, 1)
    assert [f["id"] for f in await received(session, b, old[0])] == old
    own_redis.stop()
    own_redis.start()
    with trio.fail_after(WAIT * 2):
        while True:
            try:
                new = await burst(a, 1, 1)
                break
            except HubError as exc:
                assert exc.status in (503, 504)
                await trio.sleep(0.05)  # polling until the node has reconnected
    got = await received(session, b, new[0])
    assert [f["message"] for f in got] == ["events_dropped", "E1"]
    assert got[0]["body"] == {"dropped": 0, "reason": "backplane_gap"}
