"""Hub-internal delivery latency: the fixed-bucket histogram, and that a served
connection records one observation per published event it writes (time from the publish
being accepted to its frame being written), and none for anything else it writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.latency import BUCKETS, LatencyHistogram
from hubd.core.publishing import publish_request

from .conftest import PUBLISHER, SUBSCRIBER, Client, StalledTransport, connect, make_hub, serve

INF = float("inf")


def bucket_of(hist: LatencyHistogram) -> int:
    """The index of the only non-empty bucket."""
    (index,) = [i for i, n in enumerate(hist.counts) if n]
    return index


# -- the histogram -------------------------------------------------------------------------


def test_buckets_are_increasing_and_reach_below_a_millisecond() -> None:
    assert list(BUCKETS) == sorted(set(BUCKETS))
    assert BUCKETS[0] <= 0.00005
    assert sum(1 for b in BUCKETS if b <= 0.001) >= 5


def test_empty_histogram() -> None:
    hist = LatencyHistogram()
    assert hist.count == 0
    assert hist.sum == 0.0
    assert hist.counts == [0] * (len(BUCKETS) + 1)
    assert hist.quantile(0.5) is None
    snap = hist.snapshot()
    assert snap["count"] == 0
    assert snap["p50_le_seconds"] is None
    assert snap["p99_le_seconds"] is None
    buckets = snap["buckets"]
    assert isinstance(buckets, dict)
    assert set(buckets.values()) == {0}
    assert list(buckets)[-1] == "+Inf"


@pytest.mark.parametrize("i", range(len(BUCKETS)))
def test_a_value_on_a_bucket_edge_counts_in_that_bucket(i: int) -> None:
    """Buckets are upper bounds, inclusive (Prometheus `le`)."""
    hist = LatencyHistogram()
    hist.observe(BUCKETS[i])
    assert bucket_of(hist) == i


@pytest.mark.parametrize("i", range(len(BUCKETS)))
def test_a_value_just_over_an_edge_counts_in_the_next_bucket(i: int) -> None:
    hist = LatencyHistogram()
    hist.observe(BUCKETS[i] * 1.000001)
    assert bucket_of(hist) == i + 1


@pytest.mark.parametrize(
    ("seconds", "index"),
    [
        pytest.param(0.0, 0, id="zero"),
        pytest.param(0.00001, 0, id="10us"),
        pytest.param(0.0003, BUCKETS.index(0.0005), id="300us"),
        pytest.param(0.0009999, BUCKETS.index(0.001), id="just-under-1ms"),
        pytest.param(0.001, BUCKETS.index(0.001), id="1ms"),
        pytest.param(0.0010001, BUCKETS.index(0.0025), id="just-over-1ms"),
        pytest.param(BUCKETS[-1], len(BUCKETS) - 1, id="last-bound"),
        pytest.param(BUCKETS[-1] + 0.5, len(BUCKETS), id="over-last-bound"),
        pytest.param(3600.0, len(BUCKETS), id="an-hour"),
    ],
)
def test_bucket_placement(seconds: float, index: int) -> None:
    hist = LatencyHistogram()
    hist.observe(seconds)
    assert bucket_of(hist) == index
    assert hist.count == 1
    assert hist.sum == seconds


def test_observe_many_counts_n_times() -> None:
    hist = LatencyHistogram()
    hist.observe_many(0.002, 5)
    hist.observe(0.002)
    assert hist.count == 6
    assert hist.counts[BUCKETS.index(0.0025)] == 6
    assert hist.sum == pytest.approx(0.012)


def known_data() -> LatencyHistogram:
    """90 observations at 300 µs (le 0.0005), 9 at 20 ms (le 0.025), 1 at 30 s (+Inf)."""
    hist = LatencyHistogram()
    for _ in range(90):
        hist.observe(0.0003)
    for _ in range(9):
        hist.observe(0.02)
    hist.observe(30.0)
    return hist


@pytest.mark.parametrize(
    ("q", "bound"),
    [
        (0.01, 0.0005),
        (0.5, 0.0005),
        (0.9, 0.0005),
        (0.91, 0.025),
        (0.99, 0.025),
        (0.995, INF),
        (1.0, INF),
    ],
)
def test_quantile_is_the_upper_bound_of_the_bucket_holding_it(q: float, bound: float) -> None:
    assert known_data().quantile(q) == bound


def test_quantile_of_a_single_observation() -> None:
    hist = LatencyHistogram()
    hist.observe(0.004)
    for q in (0.01, 0.5, 0.99, 1.0):
        assert hist.quantile(q) == 0.005


def test_snapshot_has_cumulative_buckets_count_sum_and_percentiles() -> None:
    hist = known_data()
    snap = hist.snapshot()
    assert snap["count"] == 100
    assert snap["sum_seconds"] == pytest.approx(90 * 0.0003 + 9 * 0.02 + 30.0)
    assert snap["p50_le_seconds"] == 0.0005
    assert snap["p90_le_seconds"] == 0.0005
    assert snap["p99_le_seconds"] == 0.025
    buckets = snap["buckets"]
    assert isinstance(buckets, dict)
    keys = list(buckets)
    assert len(keys) == len(BUCKETS) + 1
    assert keys[-1] == "+Inf"
    assert [float(k) for k in keys[:-1]] == list(BUCKETS)
    values = list(buckets.values())
    assert values == sorted(values)  # cumulative: never decreasing
    expected = []
    for bound in BUCKETS:
        expected.append(90 * (bound >= 0.0003) + 9 * (bound >= 0.02))
    assert values[:-1] == expected
    assert values[-1] == 100
    assert buckets["0.001"] == 90
    assert buckets["0.025"] == 99
    # The snapshot is plain JSON.
    assert json.loads(json.dumps(snap)) == snap


def test_snapshot_is_strict_json_past_the_last_bound() -> None:
    """JSON has no infinity: a quantile past the last bound must still encode."""
    hist = LatencyHistogram()
    hist.observe(BUCKETS[-1] * 2)
    snap = hist.snapshot()
    text = json.dumps(snap, allow_nan=False)
    assert json.loads(text)["count"] == 1
    assert snap["p99_le_seconds"] not in (None, 0.0)
    buckets = snap["buckets"]
    assert isinstance(buckets, dict)
    assert buckets["+Inf"] == 1
    assert buckets[list(buckets)[-2]] == 0


def test_snapshot_does_not_change_the_histogram() -> None:
    hist = known_data()
    counts = list(hist.counts)
    hist.snapshot()
    hist.snapshot()
    assert hist.counts == counts
    assert hist.count == 100


# -- what a served connection records ------------------------------------------------------

PING = {"event_type": "health", "message": "ping", "id": "sync"}


def body(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode()


def pdfm(n: int) -> bytes:
    return body(*({"event_type": "pdfm", "message": "SEQ", "body": i} for i in range(n)))


async def sync(client: Client) -> None:
    """Ping and read up to the pong. The writer records latency right after a write and
    before taking the next frame, so once the pong is read every earlier frame is counted."""
    await client.send(PING)
    while True:
        raw = await client.receive_raw()
        if any(json.loads(line).get("ref_id") == "sync" for line in raw.split("\n")):
            return


async def start(nursery: trio.Nursery, hub: Hub, channels: str = "pdfm,health") -> Client:
    # Trio's virtual clock starts at 0; move it on so that publish stamps are real times.
    await trio.sleep(1)
    return await connect(nursery, hub, SUBSCRIBER, channels)


async def test_confirmation_pongs_and_errors_are_not_observed(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await start(nursery, hub)
    await client.send("not json")
    assert (await client.receive())["message"] == "error"
    await client.send({"event_type": "system", "message": "client-id"})
    assert (await client.receive())["message"] == "error"
    await sync(client)
    await sync(client)
    assert hub.latency.count == 0


async def test_one_observation_per_published_event_written(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await start(nursery, hub)
    publish_request(hub, PUBLISHER, pdfm(3))
    for i in range(3):
        assert (await client.receive())["body"] == i
    await sync(client)
    assert hub.latency.count == 3
    publish_request(hub, PUBLISHER, body({"event_type": "pdfm", "message": "ONE"}))
    assert (await client.receive())["message"] == "ONE"
    await sync(client)
    assert hub.latency.count == 4
    # Events for other channels are not written to it, so not observed either.
    publish_request(hub, PUBLISHER, body({"event_type": "orchestrator", "message": "X"}))
    await sync(client)
    assert hub.latency.count == 4


async def test_each_subscriber_writing_an_event_is_one_observation(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    clients = [await start(nursery, hub) for _ in range(3)]
    publish_request(hub, PUBLISHER, pdfm(2))
    for client in clients:
        await sync(client)
    assert hub.latency.count == 6


async def test_frames_without_an_accept_stamp_are_not_observed(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Only published events carry `accepted_at`; a frame handed over without one is skipped."""
    hub = make_hub()
    client = await start(nursery, hub)
    hub.publish("pdfm", Frame(b'{"message":"unstamped"}'))
    assert (await client.receive())["message"] == "unstamped"
    await sync(client)
    assert hub.latency.count == 0


async def test_batch_mode_observes_every_event_in_a_frame(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=3)
    await trio.sleep(1)
    session = hub.admit(SUBSCRIBER, "192.0.2.50", "pdfm,health", batch=True)
    client = await serve(nursery, hub, session)
    await client.receive()  # the confirmation
    publish_request(hub, PUBLISHER, pdfm(7))
    seen = 0
    while seen < 7:
        seen += len((await client.receive_raw()).split("\n"))
    assert seen == 7
    await sync(client)
    assert hub.latency.count == 7


async def test_latency_is_accept_to_write_time(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """A socket that takes 0.3 s to accept the write shows up as 0.3 s of latency."""
    hub = make_hub()
    transport = StalledTransport()
    await trio.sleep(1)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm,health", transport=transport)
    transport.stall()
    publish_request(hub, PUBLISHER, pdfm(2))
    await trio.sleep(0.3)
    transport.resume()
    assert (await client.receive())["body"] == 0
    assert (await client.receive())["body"] == 1
    await sync(client)
    assert hub.latency.count == 2
    assert hub.latency.sum == pytest.approx(0.6)
    assert hub.latency.counts[BUCKETS.index(0.5)] == 2
    snap = hub.latency.snapshot()
    buckets = snap["buckets"]
    assert isinstance(buckets, dict)
    assert (buckets["0.25"], buckets["0.5"], buckets["+Inf"]) == (0, 2, 2)


async def test_a_prompt_write_is_in_the_lowest_bucket(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await start(nursery, hub)
    publish_request(hub, PUBLISHER, pdfm(1))
    await client.receive()
    await sync(client)
    assert hub.latency.counts[0] == 1  # no virtual time passed between accept and write
    assert hub.latency.quantile(0.99) == BUCKETS[0]


async def test_dropped_events_and_the_drop_notice_are_not_observed(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2)
    transport = StalledTransport()
    await trio.sleep(1)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm,health", transport=transport)
    transport.stall()
    publish_request(hub, PUBLISHER, pdfm(5))  # the queue keeps the last two
    await trio.sleep(0.1)
    transport.resume()
    got = [await client.receive() for _ in range(3)]
    assert [g.get("body") for g in got[:2]] == [3, 4]
    assert got[2]["message"] == "events_dropped"
    assert got[2]["body"] == {"dropped": 3}
    await sync(client)
    assert hub.latency.count == 2
