"""`Hub.stats()`: connections, totals and per-channel counts, drops, queue depth, uptime
and the delivery-latency histogram, after real traffic through the hub and served
connections."""

from __future__ import annotations

import json
from typing import Any

import trio
from trio.testing import MockClock

from hubd.core.hub import Hub
from hubd.core.publishing import publish_request

from .conftest import ADMIN, PUBLISHER, SUBSCRIBER, Client, admit, connect, make_hub, queued

CHANNELS = ["global", "health", "orchestrator", "pdfm", "system"]


def events(channel: str, n: int, **extra: Any) -> bytes:
    return json.dumps(
        [{"event_type": channel, "message": "SEQ", "body": i, **extra} for i in range(n)]
    ).encode()


def channel_stats(hub: Hub) -> dict[str, dict[str, int]]:
    channels = hub.stats()["channels"]
    assert isinstance(channels, dict)
    return channels


async def test_fresh_hub_stats_are_zero() -> None:
    hub = make_hub()
    stats = hub.stats()
    for key in ("connections", "published", "delivered", "dropped", "queued"):
        assert stats[key] == 0, key
    assert stats["draining"] is False
    assert list(channel_stats(hub)) == CHANNELS
    assert all(
        c == {"subscribers": 0, "published": 0, "delivered": 0} for c in channel_stats(hub).values()
    )
    latency = stats["delivery_latency"]
    assert isinstance(latency, dict)
    assert latency["count"] == 0
    assert json.loads(json.dumps(stats)) == stats  # plain JSON


async def test_extra_channels_are_listed() -> None:
    hub = make_hub(channels=["builds"])
    assert list(channel_stats(hub)) == ["builds", *CHANNELS]


async def test_connections_and_subscribers_per_channel() -> None:
    hub = make_hub()
    a = admit(hub, SUBSCRIBER, "pdfm")
    admit(hub, SUBSCRIBER, "pdfm,orchestrator")
    admit(hub, SUBSCRIBER, None)
    stats = hub.stats()
    assert stats["connections"] == 3
    subscribers = {c: s["subscribers"] for c, s in channel_stats(hub).items()}
    assert subscribers == {"global": 3, "health": 0, "orchestrator": 1, "pdfm": 2, "system": 0}
    hub.unregister(a)
    assert hub.stats()["connections"] == 2
    assert channel_stats(hub)["pdfm"]["subscribers"] == 1
    assert channel_stats(hub)["global"]["subscribers"] == 2


async def test_published_and_delivered_per_channel() -> None:
    hub = make_hub()
    admit(hub, SUBSCRIBER, "pdfm")
    both = admit(hub, SUBSCRIBER, "pdfm,orchestrator")
    admit(hub, SUBSCRIBER, None)
    publish_request(hub, PUBLISHER, events("pdfm", 3))
    publish_request(hub, PUBLISHER, events("orchestrator", 2))
    publish_request(hub, ADMIN, events("global", 1))
    publish_request(hub, PUBLISHER, events("pdfm", 1, client_id=both.client_id))  # targeted
    stats = hub.stats()
    assert stats["published"] == 3 + 2 + 1 + 1
    assert stats["delivered"] == 3 * 2 + 2 * 1 + 1 * 3 + 1
    channels = channel_stats(hub)
    assert channels["pdfm"] == {"subscribers": 2, "published": 4, "delivered": 7}
    assert channels["orchestrator"] == {"subscribers": 1, "published": 2, "delivered": 2}
    assert channels["global"] == {"subscribers": 3, "published": 1, "delivered": 3}
    assert channels["health"] == {"subscribers": 0, "published": 0, "delivered": 0}
    # Nothing written yet: every confirmation and event is still queued.
    assert stats["queued"] == 3 + 7 + 2 + 3
    assert stats["dropped"] == 0


async def test_a_publish_nobody_hears_is_published_but_not_delivered() -> None:
    hub = make_hub()
    admit(hub, SUBSCRIBER, "pdfm")
    publish_request(hub, PUBLISHER, events("orchestrator", 4))
    stats = hub.stats()
    assert (stats["published"], stats["delivered"]) == (4, 0)
    assert channel_stats(hub)["orchestrator"] == {"subscribers": 0, "published": 4, "delivered": 0}


async def test_queued_falls_as_a_client_reads() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    publish_request(hub, PUBLISHER, events("pdfm", 4))
    assert hub.stats()["queued"] == 5
    assert len(await queued(s)) == 5
    assert hub.stats()["queued"] == 0
    assert hub.stats()["delivered"] == 4


async def test_drop_oldest_drops_are_counted_and_survive_the_session() -> None:
    hub = make_hub(queue_size=3)
    s = admit(hub, SUBSCRIBER, "pdfm")  # the confirmation takes one place
    publish_request(hub, PUBLISHER, events("pdfm", 5))
    stats = hub.stats()
    assert stats["dropped"] == 3  # the confirmation and the first two events
    assert stats["queued"] == 3
    assert stats["delivered"] == 5  # each was accepted; the oldest ones were then dropped
    hub.unregister(s)  # its three queued frames are never written: dropped too
    stats = hub.stats()
    assert (stats["connections"], stats["queued"], stats["dropped"]) == (0, 0, 6)


async def test_disconnect_overflow_drops_are_counted() -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    admit(hub, SUBSCRIBER, "pdfm")
    keeper = admit(hub, SUBSCRIBER, "orchestrator")
    publish_request(hub, PUBLISHER, events("pdfm", 2))  # confirmation + 2 > 2: overflow
    stats = hub.stats()
    assert stats["dropped"] == 3  # the whole queue and the frame that did not fit
    assert stats["delivered"] == 1  # the first event fitted; the second closed it
    assert stats["queued"] == 1  # the other session's confirmation
    assert keeper.close_code is None


async def test_draining_is_reported() -> None:
    hub = make_hub()
    hub.draining = True
    assert hub.stats()["draining"] is True


async def test_uptime_follows_the_clock(autojump_clock: MockClock) -> None:
    hub = make_hub()
    await trio.sleep(12.5)
    assert hub.stats()["uptime_seconds"] == 12.5


async def test_stats_after_served_traffic(nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    hub = make_hub()
    await trio.sleep(1)  # publish stamps at a non-zero virtual time
    a = await connect(nursery, hub, SUBSCRIBER, "pdfm,health")
    b = await connect(nursery, hub, SUBSCRIBER, "pdfm,orchestrator,health")
    publish_request(hub, PUBLISHER, events("pdfm", 3))
    publish_request(hub, PUBLISHER, events("orchestrator", 2))
    for client, n in ((a, 3), (b, 5)):
        for _ in range(n):
            await client.receive()
        await sync(client)
    stats = hub.stats()
    assert stats["connections"] == 2
    assert (stats["published"], stats["delivered"], stats["dropped"], stats["queued"]) == (
        5,
        8,
        0,
        0,
    )
    channels = channel_stats(hub)
    assert channels["pdfm"] == {"subscribers": 2, "published": 3, "delivered": 6}
    assert channels["orchestrator"] == {"subscribers": 1, "published": 2, "delivered": 2}
    assert channels["health"]["subscribers"] == 2
    latency = stats["delivery_latency"]
    assert isinstance(latency, dict)
    assert latency["count"] == 8  # one per event written; none for confirmations or pongs
    assert latency["buckets"]["+Inf"] == 8
    # A client that hangs up leaves the connection count and its channels at once.
    await a.hang_up()
    await a.ended()
    stats = hub.stats()
    assert stats["connections"] == 1
    assert channel_stats(hub)["pdfm"]["subscribers"] == 1
    assert stats["delivered"] == 8  # totals are since start, not per live connection


async def sync(client: Client) -> None:
    """A ping round trip: once the pong is read, every earlier frame was written."""
    await client.send({"event_type": "health", "message": "ping", "id": "sync"})
    while (await client.receive()).get("ref_id") != "sync":
        pass
