"""`hubd.metrics`: the Prometheus exposition is read from the hub's own counters when
scraped. Traffic is driven through the core (admission, served sessions over
`MemoryTransport`, `publish_request`, closes, client frames) and the rendered text is
parsed back with prometheus_client's own parser."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from trio.testing import MockClock

from hubd import __version__
from hubd.core.close_codes import CLOSE_GOING_AWAY
from hubd.core.hub import Hub
from hubd.core.latency import BUCKETS
from hubd.core.publishing import publish_request
from hubd.metrics import CONTENT_TYPE, HttpCounts, Metrics

from .conftest import ADMIN, PUBLISHER, SUBSCRIBER, admit, connect, make_hub, queued

CHANNELS = ["global", "health", "orchestrator", "pdfm", "system"]
PING = {"event_type": "health", "message": "ping"}

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One rendering of /metrics, parsed: families by name and samples by name+labels."""

    def __init__(self, hub: Hub, http: HttpCounts | None = None) -> None:
        text = Metrics(hub, http or HttpCounts()).render().decode()
        self.text = text
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, key
                self.samples[key] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]

    def labelled(self, name: str, label: str) -> dict[str, float]:
        """Every sample of `name` by the value of its one label."""
        return {dict(k)[label]: v for (n, k), v in self.samples.items() if n == name}

    def per_channel(self, name: str) -> dict[str, float]:
        return self.labelled(name, "channel")


def events(channel: str, n: int, **extra: Any) -> bytes:
    return json.dumps(
        [{"event_type": channel, "message": "SEQ", "body": i, **extra} for i in range(n)]
    ).encode()


def one(channel: str, **extra: Any) -> bytes:
    return json.dumps({"event_type": channel, "message": "ONE", **extra}).encode()


def by_channel(moved: dict[str, float] | None = None) -> dict[str, float]:
    """Every built-in channel: 0, except those in `moved`."""
    moved = moved or {}
    return {c: moved.get(c, 0.0) for c in CHANNELS}


# -- the exposition ------------------------------------------------------------------------


async def test_every_family_is_exposed_with_its_type() -> None:
    scrape = Scrape(make_hub())
    hubd = {name: kind for name, kind in scrape.types.items() if name.startswith("hubd_")}
    assert hubd == {
        "hubd_build_info": "gauge",
        "hubd_uptime_seconds": "gauge",
        "hubd_draining": "gauge",
        "hubd_connections_open": "gauge",
        "hubd_connections_max": "gauge",
        "hubd_channel_subscribers": "gauge",
        "hubd_connections_accepted": "counter",
        "hubd_connections_rejected": "counter",
        "hubd_connections_closed": "counter",
        "hubd_events_published": "counter",
        "hubd_events_delivered": "counter",
        "hubd_events_dropped": "counter",
        "hubd_queue_depth": "gauge",
        "hubd_queue_depth_max": "gauge",
        "hubd_delivery_latency_seconds": "histogram",
        "hubd_frames_received": "counter",
        "hubd_frame_errors": "counter",
        "hubd_http_requests": "counter",
        "hubd_publish_duration_seconds": "histogram",
    }
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    # Counters carry the _total suffix on the wire.
    assert "\nhubd_connections_accepted_total 0.0\n" in scrape.text


async def test_the_standard_process_and_python_collectors_are_registered() -> None:
    import resource

    scrape = Scrape(make_hub())
    others = {name: kind for name, kind in scrape.types.items() if not name.startswith("hubd_")}
    assert {
        "process_resident_memory_bytes": "gauge",
        "process_virtual_memory_bytes": "gauge",
        "process_open_fds": "gauge",
        "process_max_fds": "gauge",
        "process_cpu_seconds": "counter",
        "process_start_time_seconds": "gauge",
        "python_info": "gauge",
        "python_gc_collections": "counter",
    }.items() <= others.items()
    assert set(others) <= {n for n in others if n.startswith(("process_", "python_"))}
    # This process's own figures, read from /proc when scraped.
    assert scrape("process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 3 <= scrape("process_open_fds") < scrape("process_max_fds")
    assert scrape("process_resident_memory_bytes") > 10_000_000
    assert scrape("process_cpu_seconds_total") > 0


async def test_fresh_hub_reads_zero() -> None:
    scrape = Scrape(make_hub())
    assert scrape("hubd_build_info", version=__version__) == 1
    assert scrape("hubd_draining") == 0
    assert scrape("hubd_connections_open") == 0
    assert scrape("hubd_connections_max") == 10000  # limits.max_connections
    assert scrape("hubd_connections_accepted_total") == 0
    assert scrape.labelled("hubd_connections_rejected_total", "status") == {}
    assert scrape.labelled("hubd_connections_closed_total", "code") == {}
    for name in (
        "hubd_channel_subscribers",
        "hubd_events_published_total",
        "hubd_events_delivered_total",
        "hubd_events_dropped_total",
    ):
        assert scrape.per_channel(name) == by_channel(), name
    assert scrape("hubd_queue_depth") == 0
    assert scrape("hubd_queue_depth_max") == 0
    assert scrape("hubd_frames_received_total") == 0
    assert scrape("hubd_frame_errors_total") == 0
    assert scrape("hubd_delivery_latency_seconds_count") == 0
    assert scrape("hubd_delivery_latency_seconds_sum") == 0
    buckets = scrape.labelled("hubd_delivery_latency_seconds_bucket", "le")
    assert len(buckets) == len(BUCKETS) + 1
    assert set(buckets.values()) == {0.0}
    assert scrape.labelled("hubd_http_requests_total", "route") == {}
    for status_class in ("2xx", "4xx", "5xx"):
        assert scrape("hubd_publish_duration_seconds_count", status_class=status_class) == 0


async def test_extra_channels_get_their_own_series() -> None:
    hub = make_hub(channels=["builds"])
    admit(hub, SUBSCRIBER, "builds")
    publish_request(hub, PUBLISHER, events("builds", 2))
    scrape = Scrape(hub)
    assert scrape("hubd_channel_subscribers", channel="builds") == 1
    assert scrape("hubd_events_published_total", channel="builds") == 2
    assert scrape("hubd_events_delivered_total", channel="builds") == 2
    assert set(scrape.per_channel("hubd_events_dropped_total")) == {"builds", *CHANNELS}


async def test_uptime_follows_the_clock(mock_clock: MockClock) -> None:
    hub = make_hub()
    assert Scrape(hub)("hubd_uptime_seconds") == 0
    mock_clock.jump(12.5)
    assert Scrape(hub)("hubd_uptime_seconds") == 12.5


async def test_draining_gauge() -> None:
    hub = make_hub()
    hub.draining = True
    assert Scrape(hub)("hubd_draining") == 1


# -- connections ---------------------------------------------------------------------------


async def test_connections_open_accepted_and_subscribers_per_channel(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    hub = make_hub()
    metrics = Metrics(hub, HttpCounts())
    await connect(nursery, hub, SUBSCRIBER, "pdfm,health")
    await connect(nursery, hub, SUBSCRIBER, "pdfm")
    await connect(nursery, hub, SUBSCRIBER, None)
    scrape = Scrape(hub)
    assert scrape("hubd_connections_open") == 3
    assert scrape("hubd_connections_accepted_total") == 3
    assert scrape.per_channel("hubd_channel_subscribers") == by_channel(
        {"global": 3, "pdfm": 2, "health": 1}
    )
    # The same registry reads the hub again on every scrape.
    assert b"hubd_connections_open 3.0" in metrics.render()


async def test_rejections_are_counted_by_status_and_reason() -> None:
    hub = make_hub()
    # The web layer counts each refused handshake by the status it answered and the
    # error code: the two 503s are told apart.
    for status, reason in [
        (401, "unauthorized"),
        (401, "unauthorized"),
        (409, "ip_in_use"),
        (503, "draining"),
        (503, "at_capacity"),
        (503, "at_capacity"),
    ]:
        hub.rejected.add(status, reason)
    scrape = Scrape(hub)
    rejected = {
        (dict(labels)["status"], dict(labels)["reason"]): value
        for (name, labels), value in scrape.samples.items()
        if name == "hubd_connections_rejected_total"
    }
    assert rejected == {
        ("401", "unauthorized"): 2,
        ("409", "ip_in_use"): 1,
        ("503", "draining"): 1,
        ("503", "at_capacity"): 2,
    }
    # By status alone, as before.
    assert dict(hub.rejected) == {401: 2, 409: 1, 503: 3}
    assert scrape("hubd_connections_accepted_total") == 0


async def test_max_connections_follows_a_reload() -> None:
    hub = make_hub()
    hub.reconfigure(hub.settings, msgspec.structs.replace(hub.limits, max_connections=250))
    assert Scrape(hub)("hubd_connections_max") == 250


async def test_closes_are_counted_by_code(nursery: trio.Nursery, mock_clock: MockClock) -> None:
    hub = make_hub(max_message_bytes=100, idle_timeout=30)
    leaver = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    big = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    idle = await connect(nursery, hub, SUBSCRIBER, "health")
    drained = await connect(nursery, hub, SUBSCRIBER, "health")
    kept = await connect(nursery, hub, SUBSCRIBER, "orchestrator,health")

    await leaver.hang_up()
    await leaver.ended()
    scrape = Scrape(hub)
    assert scrape.labelled("hubd_connections_closed_total", "code") == {"peer": 1}
    assert scrape("hubd_connections_open") == 4

    await big.send("x" * 101)
    assert (await big.expect_close()).code == 1009

    # Every other client pings in time; `idle` never sends anything.
    mock_clock.jump(20)
    for client in (drained, kept):
        await client.send(PING)
        assert (await client.receive())["message"] == "pong"
    mock_clock.jump(11)
    assert (await idle.expect_close()).code == 4408

    drained.session.request_close(CLOSE_GOING_AWAY, "server shutting down")
    assert (await drained.expect_close()).code == 1001

    scrape = Scrape(hub)
    assert scrape.labelled("hubd_connections_closed_total", "code") == {
        "peer": 1,
        "1009": 1,
        "4408": 1,
        "1001": 1,
    }
    assert scrape("hubd_connections_open") == 1
    assert scrape("hubd_connections_accepted_total") == 5
    assert scrape.per_channel("hubd_channel_subscribers") == by_channel(
        {"global": 1, "orchestrator": 1, "health": 1}
    )
    assert kept.session.client_id in hub.sessions


# -- events --------------------------------------------------------------------------------


async def test_published_and_delivered_per_channel() -> None:
    hub = make_hub()
    admit(hub, SUBSCRIBER, "pdfm")
    admit(hub, SUBSCRIBER, None)
    publish_request(hub, PUBLISHER, events("orchestrator", 4))  # nobody listens yet
    both = admit(hub, SUBSCRIBER, "pdfm,orchestrator")
    publish_request(hub, PUBLISHER, events("pdfm", 3))
    publish_request(hub, PUBLISHER, events("orchestrator", 2))
    publish_request(hub, ADMIN, one("global"))
    publish_request(hub, PUBLISHER, one("pdfm", client_id=both.client_id))  # targeted
    scrape = Scrape(hub)
    assert scrape.per_channel("hubd_events_published_total") == by_channel(
        {"pdfm": 4, "orchestrator": 6, "global": 1}
    )
    assert scrape.per_channel("hubd_events_delivered_total") == by_channel(
        {"pdfm": 3 * 2 + 1, "orchestrator": 2, "global": 3}
    )
    assert scrape.per_channel("hubd_events_dropped_total") == by_channel()


async def test_queue_depth_total_and_max() -> None:
    hub = make_hub()
    a = admit(hub, SUBSCRIBER, "pdfm")
    b = admit(hub, SUBSCRIBER, "orchestrator")
    admit(hub, SUBSCRIBER, None)
    publish_request(hub, PUBLISHER, events("pdfm", 5))
    publish_request(hub, PUBLISHER, events("orchestrator", 2))
    scrape = Scrape(hub)
    # Every confirmation is still queued too.
    assert scrape("hubd_queue_depth") == (1 + 5) + (1 + 2) + 1
    assert scrape("hubd_queue_depth_max") == 6
    assert len(await queued(a)) == 6
    scrape = Scrape(hub)
    assert scrape("hubd_queue_depth") == 3 + 1
    assert scrape("hubd_queue_depth_max") == 3
    await queued(b)
    hub.unregister(b)
    scrape = Scrape(hub)
    assert (scrape("hubd_queue_depth"), scrape("hubd_queue_depth_max")) == (1, 1)


async def test_drop_oldest_drops_are_counted_by_channel_and_survive_the_session() -> None:
    hub = make_hub(queue_size=2)
    s = admit(hub, SUBSCRIBER, "pdfm,orchestrator")
    await queued(s)  # the confirmation
    publish_request(hub, PUBLISHER, events("pdfm", 5))  # keeps the last two: 3 dropped
    scrape = Scrape(hub)
    assert scrape.per_channel("hubd_events_dropped_total") == by_channel({"pdfm": 3})
    assert scrape.per_channel("hubd_events_delivered_total") == by_channel({"pdfm": 5})
    publish_request(hub, PUBLISHER, events("orchestrator", 1))  # pushes one more pdfm out
    assert Scrape(hub).per_channel("hubd_events_dropped_total") == by_channel({"pdfm": 4})
    # The session ends with a pdfm and an orchestrator event never written: dropped too.
    hub.unregister(s)
    scrape = Scrape(hub)
    assert scrape.per_channel("hubd_events_dropped_total") == by_channel(
        {"pdfm": 5, "orchestrator": 1}
    )
    assert scrape("hubd_queue_depth") == 0
    assert scrape.labelled("hubd_connections_closed_total", "code") == {"peer": 1}


async def test_disconnect_overflow_drops_everything_queued_and_closes_1013(
    nursery: trio.Nursery, mock_clock: MockClock
) -> None:
    hub = make_hub(queue_size=3, slow_consumer="disconnect")
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm,orchestrator")
    publish_request(hub, PUBLISHER, events("orchestrator", 1))
    publish_request(hub, PUBLISHER, events("pdfm", 3))  # the fourth frame overflows
    assert (await client.expect_close()).code == 1013
    scrape = Scrape(hub)
    assert scrape.per_channel("hubd_events_dropped_total") == by_channel(
        {"pdfm": 3, "orchestrator": 1}
    )
    assert scrape.labelled("hubd_connections_closed_total", "code") == {"1013": 1}


# -- client frames -------------------------------------------------------------------------


async def test_frames_received_and_refused(nursery: trio.Nursery, mock_clock: MockClock) -> None:
    hub = make_hub(max_message_bytes=200)
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    other = await connect(nursery, hub, SUBSCRIBER, "system")

    await client.send(PING)
    assert (await client.receive())["message"] == "pong"
    for bad in ("not json", b"\x00binary", {"event_type": "pdfm", "message": "x"}):
        await client.send(bad)
        assert (await client.receive())["message"] == "error"
    await other.send(PING)  # needs the health channel: an error reply
    assert (await other.receive())["message"] == "error"
    await other.send({"event_type": "system", "message": "client-id"})
    assert (await other.receive())["message"] == "client-id"
    scrape = Scrape(hub)
    assert scrape("hubd_frames_received_total") == 6
    assert scrape("hubd_frame_errors_total") == 4

    await client.send("y" * 201)
    assert (await client.expect_close()).code == 1009
    scrape = Scrape(hub)
    assert scrape("hubd_frames_received_total") == 7
    assert scrape("hubd_frame_errors_total") == 5


# -- delivery latency ----------------------------------------------------------------------


async def test_delivery_latency_histogram(nursery: trio.Nursery, mock_clock: MockClock) -> None:
    hub = make_hub()
    a = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    b = await connect(nursery, hub, SUBSCRIBER, "pdfm")

    # Two events to two subscribers, written 3 ms after they were accepted.
    publish_request(hub, PUBLISHER, events("pdfm", 2))
    mock_clock.jump(0.003)
    for client in (a, b):
        assert [(await client.receive())["body"] for _ in range(2)] == [0, 1]
    await trio.testing.wait_all_tasks_blocked()
    scrape = Scrape(hub)
    assert scrape("hubd_delivery_latency_seconds_count") == 4
    assert scrape("hubd_delivery_latency_seconds_sum") == pytest.approx(0.012)
    buckets = scrape.labelled("hubd_delivery_latency_seconds_bucket", "le")
    assert buckets["0.0025"] == 0
    assert buckets["0.005"] == 4
    assert buckets["+Inf"] == 4

    # One more to `a`, written without the clock moving.
    publish_request(hub, PUBLISHER, one("pdfm", client_id=a.client_id))
    assert (await a.receive())["message"] == "ONE"
    await trio.testing.wait_all_tasks_blocked()
    scrape = Scrape(hub)
    buckets = scrape.labelled("hubd_delivery_latency_seconds_bucket", "le")
    assert buckets[repr(BUCKETS[0])] == 1
    assert buckets["0.0025"] == 1
    assert buckets["0.005"] == 5
    assert buckets["+Inf"] == 5
    assert scrape("hubd_delivery_latency_seconds_count") == 5
    assert scrape("hubd_delivery_latency_seconds_sum") == pytest.approx(0.012)
    # Cumulative, in increasing order of bounds.
    values = list(buckets.values())
    assert values == sorted(values)


# -- HTTP requests -------------------------------------------------------------------------


async def test_http_requests_by_route_and_status() -> None:
    http = HttpCounts()
    for route, status in [
        ("/v1/events", 202),
        ("/v1/events", 202),
        ("/v1/events", 401),
        ("/metrics", 200),
        ("other", 404),
    ]:
        http.add(route, status)
    scrape = Scrape(make_hub(), http)
    requests = {
        (dict(labels)["route"], dict(labels)["status"]): value
        for (name, labels), value in scrape.samples.items()
        if name == "hubd_http_requests_total"
    }
    assert requests == {
        ("/v1/events", "202"): 2,
        ("/v1/events", "401"): 1,
        ("/metrics", "200"): 1,
        ("other", "404"): 1,
    }


async def test_publish_durations_by_status_class() -> None:
    http = HttpCounts()
    for status, seconds in [(202, 0.0003), (202, 0.002), (401, 0.00004), (503, 0.3), (504, 5.0)]:
        http.publish_answered(status, seconds)
    scrape = Scrape(make_hub(), http)
    name = "hubd_publish_duration_seconds"
    assert scrape(f"{name}_count", status_class="2xx") == 2
    assert scrape(f"{name}_sum", status_class="2xx") == pytest.approx(0.0023)
    assert scrape(f"{name}_count", status_class="4xx") == 1
    assert scrape(f"{name}_count", status_class="5xx") == 2
    assert scrape(f"{name}_sum", status_class="5xx") == pytest.approx(5.3)
    buckets = {
        dict(labels)["le"]: value
        for (n, labels), value in scrape.samples.items()
        if n == f"{name}_bucket" and dict(labels)["status_class"] == "2xx"
    }
    assert (buckets["0.00025"], buckets["0.0005"], buckets["0.0025"]) == (0, 1, 2)
    assert buckets["+Inf"] == 2
    assert len(buckets) == len(BUCKETS) + 1


def test_the_metrics_listener_is_recognised_on_a_wildcard_bind() -> None:
    from types import SimpleNamespace

    from hubd.web.app import _on_metrics_listener

    def on(bound: tuple[str, int], local: tuple[str, int]) -> bool:
        ctx: Any = SimpleNamespace(metrics_address=bound)
        return _on_metrics_listener(ctx, {"server": local})

    assert on(("127.0.0.1", 9100), ("127.0.0.1", 9100))
    assert on(("0.0.0.0", 9100), ("10.1.2.3", 9100))
    assert on(("::", 9100), ("::1", 9100))
    assert not on(("127.0.0.1", 9100), ("127.0.0.1", 8080))
    assert not on(("10.0.0.1", 9100), ("127.0.0.1", 9100))
