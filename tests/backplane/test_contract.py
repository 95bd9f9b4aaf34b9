"""One contract, two backplanes: every rule below holds for the in-memory hub (one node
that is the whole cluster) and for Redis (two nodes sharing one redis-server).

Nodes run in this trio run, with subscribers served over `MemoryTransport`; Redis is a
real server. Waits are bounded by `fail_after`, never timed with sleeps."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel

from hubd.backplane import Backplane, MemoryBackplane, join, publish_through
from hubd.core.auth import Principal
from hubd.core.errors import HubError
from hubd.core.hub import Hub
from hubd.core.serving import serve_session
from hubd.core.session import Session
from hubd.core.transport import MemoryTransport
from hubd.settings import BackplaneSettings, Settings

from ..redis_server import RedisServer

WAIT = 10.0
_prefixes = itertools.count(1)
_ips = itertools.count(1)


def principal(name: str, *roles: str) -> Principal:
    return Principal(name=name, roles=frozenset(roles), channels=None, kind="token")


ALICE = principal("alice", "subscriber")
BOB = principal("bob", "subscriber")
PUBLISHER = principal("pub", "publisher")
ADMIN = principal("root", "admin")


def fresh_ip() -> str:
    n = next(_ips)
    return f"10.9.{n // 250}.{n % 250 + 1}"


def make_hub(**hub: Any) -> Hub:
    settings = msgspec.convert({"hub": hub}, Settings)
    return Hub(settings.hub, settings.limits)


@dataclass
class Cluster:
    kind: str
    a: Backplane
    b: Backplane  # the same node as `a` for the in-memory hub

    async def subscribe(
        self, node: Backplane, who: Principal = ALICE, channels: str = "pdfm", **kw: Any
    ) -> Subscriber:
        session = await join(node, who, kw.pop("ip", None) or fresh_ip(), channels, **kw)
        transport = MemoryTransport()
        sub = Subscriber(node, session, transport)
        await self.nursery.start(serve_session, node.hub, session, transport)
        sub.confirmation = await sub.next()
        return sub

    nursery: trio.Nursery = None  # type: ignore[assignment]


@dataclass
class Subscriber:
    node: Backplane
    session: Session
    transport: MemoryTransport
    confirmation: dict[str, Any] | None = None

    async def next(self) -> dict[str, Any]:
        with trio.fail_after(WAIT):
            item = await self.transport.to_client.receive()
        assert isinstance(item, str), f"expected a frame, got {item!r}"
        frame: dict[str, Any] = json.loads(item)
        return frame

    async def messages(self, n: int) -> list[str]:
        return [(await self.next())["message"] for _ in range(n)]

    async def hang_up(self) -> None:
        await self.transport.from_client.aclose()
        with trio.fail_after(WAIT):
            while self.session.registered:
                await trio.lowlevel.checkpoint()  # yield until the session has ended
        # What the web layer does once a session has ended (hubd/web/ws.py): without it
        # the IP stays claimed until its lease runs out.
        self.node.release(self.session)


async def publish(node: Backplane, *events: dict[str, Any], who: Principal = ADMIN) -> list[str]:
    payload = json.dumps(list(events) if len(events) > 1 else events[0]).encode()
    return (await publish_through(node, who, payload)).ids


def ev(message: str, channel: str = "pdfm", **extra: Any) -> dict[str, Any]:
    return {"event_type": channel, "message": message, **extra}


@pytest.fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    if request.param == "memory":
        node = MemoryBackplane(make_hub(history_size=5))
        made = Cluster("memory", node, node)
    else:
        from hubd.backplane.redis import RedisBackplane

        server: RedisServer = request.getfixturevalue("redis_server")
        settings = BackplaneSettings(
            kind="redis", url=server.url, prefix=f"t{next(_prefixes)}", lease_seconds=3.0
        )
        nodes = [RedisBackplane(make_hub(history_size=5), settings) for _ in "ab"]
        for node in nodes:
            await nursery.start(node.run)
            with trio.fail_after(WAIT):
                await node.wait_healthy()
        made = Cluster("redis", nodes[0], nodes[1])
    made.nursery = nursery
    yield made
    nursery.cancel_scope.cancel()


async def test_an_event_reaches_every_subscriber_on_every_node_once_in_order(
    cluster: Cluster,
) -> None:
    here = await cluster.subscribe(cluster.a)
    there = await cluster.subscribe(cluster.b)
    await publish(cluster.a, ev("1"))
    await publish(cluster.b, ev("2"), ev("3"))
    await publish(cluster.a, ev("4"))
    for sub in (here, there):
        assert await sub.messages(4) == ["1", "2", "3", "4"]
    # Exactly once: nothing more is queued behind them.
    marker = await publish(cluster.a, ev("end"))
    for sub in (here, there):
        got = await sub.next()
        assert got["id"] == marker[0]


async def test_ids_are_the_ids_subscribers_see(cluster: Cluster) -> None:
    sub = await cluster.subscribe(cluster.b)
    ids = await publish(cluster.a, ev("x"), ev("y"))
    assert [(await sub.next())["id"] for _ in ids] == ids


async def test_one_connection_per_ip_across_nodes(cluster: Cluster) -> None:
    ip = fresh_ip()
    first = await cluster.subscribe(cluster.a, ip=ip)
    with pytest.raises(HubError) as caught:
        await cluster.subscribe(cluster.b, ip=ip)
    assert caught.value.status == 409
    assert caught.value.code == "ip_in_use"
    await first.hang_up()
    with trio.fail_after(WAIT):
        while True:  # the release reaches the backplane asynchronously
            try:
                again = await cluster.subscribe(cluster.b, ip=ip)
                break
            except HubError as exc:
                assert exc.status == 409
                await trio.sleep(0.01)
    assert again.session.registered


async def test_resume_on_any_node_replays_what_was_missed(cluster: Cluster) -> None:
    sub = await cluster.subscribe(cluster.a, channels="pdfm")
    seen = (await publish(cluster.a, ev("seen")))[0]
    assert (await sub.next())["id"] == seen
    await sub.hang_up()
    await publish(cluster.a, ev("m1"), ev("not subscribed", "orchestrator"), ev("m2"))
    await publish(cluster.b, ev("m3", "global"))
    back = await cluster.subscribe(cluster.b, channels="pdfm", since=seen)
    assert await back.messages(4) == ["m1", "m2", "m3", "replay_complete"]
    live = await publish(cluster.a, ev("live"))
    assert (await back.next())["id"] == live[0]


async def test_replay_complete_says_whether_anything_is_missing(cluster: Cluster) -> None:
    first = (await publish(cluster.a, ev("0")))[0]
    await publish(cluster.a, *[ev(str(n)) for n in range(1, 8)])  # history_size is 5
    sub = await cluster.subscribe(cluster.b, since=first)
    frames = [await sub.next() for _ in range(6)]
    assert [f["message"] for f in frames[:5]] == ["3", "4", "5", "6", "7"]
    assert frames[5]["body"] == {"replayed": 5, "complete": False}
    unknown = await cluster.subscribe(cluster.b, since="1" * 64)
    assert (await unknown.next())["body"] == {"replayed": 0, "complete": False}


async def test_targeted_publish_reaches_a_client_on_another_node(cluster: Cluster) -> None:
    target = await cluster.subscribe(cluster.b)
    other = await cluster.subscribe(cluster.b)
    await publish(cluster.a, ev("private", client_id=target.session.client_id))
    got = await target.next()
    assert (got["message"], got["client_id"]) == ("private", target.session.client_id)
    marker = await publish(cluster.a, ev("after"))
    assert (await other.next())["id"] == marker[0]  # the private event never reached it
    with pytest.raises(HubError) as caught:
        await publish(cluster.a, ev("x", "orchestrator", client_id=target.session.client_id))
    assert caught.value.status == 409
    with pytest.raises(HubError) as caught:
        await publish(cluster.a, ev("x", client_id="no-such-client"))
    assert caught.value.status == 404


async def test_unsubscribe_a_client_on_another_node(cluster: Cluster) -> None:
    sub = await cluster.subscribe(cluster.b, channels="pdfm,orchestrator")
    client_id = sub.session.client_id
    with pytest.raises(HubError) as caught:
        await cluster.a.unsubscribe(BOB, client_id, ["pdfm"])
    assert caught.value.status == 403
    result = await cluster.a.unsubscribe(ALICE, client_id, ["pdfm", "health"])
    assert result.unsubscribed == ["pdfm"]
    assert result.subscriptions == ["orchestrator", "global"]
    notice = await sub.next()
    assert notice["message"] == "unsubscribed"
    assert notice["body"]["unsubscribed"] == ["pdfm"]
    await publish(cluster.a, ev("gone"))
    kept = await publish(cluster.a, ev("kept", "orchestrator"))
    assert (await sub.next())["id"] == kept[0]


async def test_replay_returns_what_followed_an_id_in_publish_order(cluster: Cluster) -> None:
    first = (await publish(cluster.a, ev("0")))[0]
    await publish(cluster.b, ev("1"), ev("skipped", "orchestrator"), ev("2"))
    replay = await cluster.a.replay(["pdfm"], first)
    assert [json.loads(f.payload)["message"] for f in replay.frames] == ["1", "2"]
    assert replay.complete is True
    assert (await cluster.a.replay(["pdfm"], "1" * 64)).complete is False
