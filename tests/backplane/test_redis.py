"""What only the Redis backplane has to show: leases of a node that died expire, and a
publish request travels to Redis in one round trip however many events it holds."""

from __future__ import annotations

import itertools
import json

import coredis
import pytest
import trio

from hubd.backplane import join, publish_through
from hubd.backplane.redis import RedisBackplane
from hubd.core.errors import HubError
from hubd.settings import BackplaneSettings

from ..redis_server import RedisServer
from .test_contract import ADMIN, ALICE, WAIT, fresh_ip, make_hub

_prefixes = itertools.count(1)


def settings(server: RedisServer, lease: float = 3.0) -> BackplaneSettings:
    return BackplaneSettings(
        kind="redis", url=server.url, prefix=f"r{next(_prefixes)}", lease_seconds=lease
    )


async def started(nursery: trio.Nursery, node: RedisBackplane) -> RedisBackplane:
    await nursery.start(node.run)
    with trio.fail_after(WAIT):
        await node.wait_healthy()
    return node


async def test_a_dead_nodes_ip_claims_expire_within_the_lease(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    config = settings(redis_server, lease=1.0)
    ip = fresh_ip()
    async with trio.open_nursery() as doomed:
        a = await started(doomed, RedisBackplane(make_hub(), config))
        await join(a, ALICE, ip, "pdfm")
        doomed.cancel_scope.cancel()  # the node dies: no release, no renewal
    b = await started(nursery, RedisBackplane(make_hub(), config))
    with pytest.raises(HubError) as caught:
        await join(b, ALICE, ip, "pdfm")
    assert caught.value.status == 409
    begun = trio.current_time()
    with trio.fail_after(WAIT):
        while True:
            try:
                session = await join(b, ALICE, ip, "pdfm")
                break
            except HubError:
                await trio.sleep(0.05)  # polling Redis until the lease runs out
    assert session.registered
    # Within the lease (plus scheduling slack on a busy machine), not after a much longer wait.
    assert trio.current_time() - begun <= config.lease_seconds + 2.0


async def test_a_live_nodes_claims_are_renewed_past_the_lease(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    config = settings(redis_server, lease=1.0)
    a = await started(nursery, RedisBackplane(make_hub(), config))
    b = await started(nursery, RedisBackplane(make_hub(), config))
    ip = fresh_ip()
    await join(a, ALICE, ip, "pdfm")
    key = f"{config.prefix}:ip:{ip}"
    async with coredis.Redis(host="127.0.0.1", port=redis_server.port) as probe:
        # Watch the claim's time to live: it must be pushed back up before it runs out,
        # three leases in a row.
        renewals = 0
        last = await probe.pttl(key)
        with trio.fail_after(WAIT):
            while renewals < 3:
                ttl = await probe.pttl(key)
                assert ttl > 0, "the claim expired although its node is alive"
                if ttl > last:
                    renewals += 1
                last = ttl
                await trio.sleep(0.02)  # polling Redis, not timing the test
    with pytest.raises(HubError) as caught:
        await join(b, ALICE, ip, "pdfm")
    assert caught.value.status == 409


async def test_many_events_take_one_round_trip(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    node = await started(nursery, RedisBackplane(make_hub(), settings(redis_server)))
    events = [{"event_type": "pdfm", "message": f"E{n}"} for n in range(500)]
    async with coredis.Redis(host="127.0.0.1", port=redis_server.port) as probe:
        before = await _evals(probe)
        result = await publish_through(node, ADMIN, json.dumps(events).encode())
        after = await _evals(probe)
    assert len(result.ids) == 500
    assert after - before == 1


async def test_publish_without_redis_is_a_503_and_nothing_is_kept(
    nursery: trio.Nursery, own_redis: RedisServer
) -> None:
    node = await started(nursery, RedisBackplane(make_hub(), settings(own_redis)))
    own_redis.stop()
    with trio.fail_after(WAIT):
        while node.healthy:  # noqa: ASYNC110 - polling the node's state, no event to wait on
            await trio.sleep(0.01)
    with pytest.raises(HubError) as caught:
        await publish_through(node, ADMIN, b'{"event_type": "pdfm", "message": "x"}')
    assert (caught.value.status, caught.value.code) == (503, "backplane_unavailable")
    with pytest.raises(HubError) as caught:
        await join(node, ALICE, fresh_ip(), "pdfm")
    assert caught.value.status == 503
    assert not node.hub.sessions
    assert "unavailable" in node.status


async def _evals(client: coredis.Redis[bytes]) -> int:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_eval") or {}
    if isinstance(entry, dict):
        return int(entry.get("calls", 0))
    return int(str(entry).split("calls=")[1].split(",")[0])


async def test_a_flushed_redis_starts_a_new_epoch_and_nothing_is_skipped(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    config = settings(redis_server)
    node = await started(nursery, RedisBackplane(make_hub(), config))
    listener = await started(nursery, RedisBackplane(make_hub(), config))
    session = await join(listener, ALICE, fresh_ip(), "pdfm")
    session.mailbox.take(10)  # the confirmation
    old = (await publish_through(node, ADMIN, b'{"event_type":"pdfm","message":"old"}')).ids
    async with coredis.Redis(host="127.0.0.1", port=redis_server.port) as probe:
        await probe.flushall()
    # The first publish after the flush notices it: refused, and the node reconnects.
    with trio.fail_after(WAIT):
        while True:
            try:
                new = await publish_through(node, ADMIN, b'{"event_type":"pdfm","message":"new"}')
                break
            except HubError as exc:
                assert exc.status == 503
                await trio.sleep(0.05)  # polling until the node has reconnected
    assert new.ids[0][:8] != old[0][:8]  # a new epoch
    # The other node delivers events of the new epoch, although their numbers restart.
    with trio.fail_after(WAIT):
        while True:
            frames = session.mailbox.take(10)
            messages = [json.loads(f.payload)["message"] for f in frames]
            if "new" in messages:
                break
            await trio.sleep(0.05)  # polling the mailbox the node fills
    replay = await node.replay(["pdfm"], old[0])
    assert replay.complete is False


async def test_without_the_per_ip_rule_an_ip_may_connect_on_several_nodes(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    import msgspec

    from hubd.core.hub import Hub
    from hubd.settings import Settings

    loose = msgspec.convert({"limits": {"one_connection_per_ip": False}}, Settings)
    config = settings(redis_server)
    a = await started(nursery, RedisBackplane(Hub(loose.hub, loose.limits), config))
    b = await started(nursery, RedisBackplane(Hub(loose.hub, loose.limits), config))
    ip = fresh_ip()
    first = await join(a, ALICE, ip, "pdfm")
    second = await join(b, ALICE, ip, "pdfm")
    third = await join(b, ALICE, ip, "pdfm")
    assert first.registered and second.registered and third.registered
    # Each is still known cluster-wide, for targeted publishes and unsubscribes.
    found = await a.clients([second.client_id, third.client_id])
    assert set(found) == {second.client_id, third.client_id}
