"""Prometheus metrics, read from the hub's own counters at scrape time.

Nothing here runs per delivery: the hub keeps plain integers and Counters (as it must for
its stats anyway) and this collector turns them into metric families when `/metrics` is
scraped, so metrics cost nothing on the fan-out path. The registry also carries
prometheus_client's standard process and Python collectors (`process_*`, `python_*`),
read from /proc at scrape time too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import trio
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from hubd import __version__
from hubd.backplane import Backplane
from hubd.core.history_store import HistoryStore
from hubd.core.hub import Hub
from hubd.core.latency import BUCKETS, LatencyHistogram

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The `status_class` series of `hubd_publish_duration_seconds` that exist from the start.
STATUS_CLASSES = ("2xx", "4xx", "5xx")


class HttpCounts:
    """HTTP requests answered, by route template and status (bounded label values), and
    how long publishes took to answer, by status class."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()
        self.publish_durations = {c: LatencyHistogram() for c in STATUS_CLASSES}

    def add(self, route: str, status: int) -> None:
        self.counts[(route, status)] += 1

    def publish_answered(self, status: int, seconds: float) -> None:
        """A publish request was answered with `status`, `seconds` after it arrived."""
        key = f"{status // 100}xx"
        histogram = self.publish_durations.get(key)
        if histogram is None:
            histogram = self.publish_durations[key] = LatencyHistogram()
        histogram.observe(seconds)


class HubCollector(Collector):
    """Collects every hubd metric from `hub` and `http` when scraped."""

    def __init__(self, hub: Hub, http: HttpCounts, backplane: Backplane | None = None) -> None:
        self.hub = hub
        self.http = http
        self.backplane = backplane
        # Set once the history file is open (`hub.history_path`); None while it is off.
        self.history: HistoryStore | None = None

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield from _daemon_metrics(hub)
        if self.backplane is not None:
            yield GaugeMetricFamily(
                "hubd_backplane_up",
                "1 while the event backplane is reachable (always 1 for the in-memory hub)",
                value=int(self.backplane.healthy),
            )
            yield from _redis_metrics(self.backplane, hub)
        if self.history is not None:
            yield from _history_metrics(self.history)
        yield from _connection_metrics(hub)
        yield from _event_metrics(hub)
        yield from _frame_metrics(hub)
        yield from _http_metrics(self.http)


def _daemon_metrics(hub: Hub) -> Iterator[Metric]:
    """The build, and how long the hub has been up and whether it is stopping."""
    info = GaugeMetricFamily("hubd_build_info", "hubd version", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
    yield GaugeMetricFamily(
        "hubd_uptime_seconds",
        "Seconds since the hub started",
        value=trio.current_time() - hub.started_at,
    )
    yield GaugeMetricFamily(
        "hubd_draining", "1 while the server is shutting down", value=int(hub.draining)
    )


def _connection_metrics(hub: Hub) -> Iterator[Metric]:
    """Subscriber connections open (in all and per channel), accepted, refused, closed."""
    yield GaugeMetricFamily(
        "hubd_connections_open", "Open subscriber connections", value=len(hub.sessions)
    )
    yield GaugeMetricFamily(
        "hubd_connections_max",
        "limits.max_connections: beyond it new subscribers are refused (503 at_capacity)",
        value=hub.limits.max_connections,
    )
    by_channel = GaugeMetricFamily(
        "hubd_channel_subscribers",
        "Open connections subscribed to each channel",
        labels=["channel"],
    )
    for channel, count in sorted(hub.subscriber_counts().items()):
        by_channel.add_metric([channel], count)
    yield by_channel

    yield CounterMetricFamily(
        "hubd_connections_accepted",
        "Subscriber connections accepted",
        value=hub.accepted,
    )
    rejected = CounterMetricFamily(
        "hubd_connections_rejected",
        "Subscriber connections refused before the upgrade, by HTTP status and reason "
        "(the error code: draining, at_capacity, ip_in_use, unauthorized, ...)",
        labels=["status", "reason"],
    )
    for (status, reason), count in sorted(hub.rejected.reasons.items()):
        rejected.add_metric([str(status), reason], count)
    yield rejected
    closed = CounterMetricFamily(
        "hubd_connections_closed",
        "Subscriber connections ended, by close code ('peer': the client closed or left)",
        labels=["code"],
    )
    for code, count in sorted(hub.closed.items()):
        closed.add_metric([code], count)
    yield closed


def _event_metrics(hub: Hub) -> Iterator[Metric]:
    """Events per channel, what waits in the queues, and the delivery latency."""
    channels = sorted(hub.channels)
    for name, help_text, counts in (
        ("hubd_events_published", "Events accepted for publishing", hub.published),
        (
            "hubd_events_delivered",
            "Events handed to subscribers (per subscriber)",
            hub.delivered,
        ),
        (
            "hubd_events_dropped",
            "Frames accepted for a subscriber but never written (overflow, close)",
            hub.dropped_by_channel,
        ),
    ):
        family = CounterMetricFamily(name, help_text, labels=["channel"])
        for channel in channels:
            family.add_metric([channel], counts[channel])
        yield family

    depths = [len(s.mailbox) for s in hub.sessions.values()]
    yield GaugeMetricFamily(
        "hubd_queue_depth", "Frames queued for all subscribers together", value=sum(depths)
    )
    yield GaugeMetricFamily(
        "hubd_queue_depth_max",
        "Frames queued for the most backed-up subscriber",
        value=max(depths, default=0),
    )

    yield HistogramMetricFamily(
        "hubd_delivery_latency_seconds",
        "Time from a publish being accepted to its frame being written, per delivery",
        buckets=_buckets(hub.latency),
        sum_value=hub.latency.sum,
    )


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs in increasing order of bounds, +Inf last."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*BUCKETS, float("inf")), histogram.counts, strict=True):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return buckets


def _frame_metrics(hub: Hub) -> Iterator[Metric]:
    """Frames subscribers sent, and how many were refused."""
    yield CounterMetricFamily(
        "hubd_frames_received", "Frames received from subscribers", value=hub.frames_in
    )
    yield CounterMetricFamily(
        "hubd_frame_errors",
        "Subscriber frames refused (error event sent, or 1009 close)",
        value=hub.frame_errors,
    )


def _http_metrics(http: HttpCounts) -> Iterator[Metric]:
    """HTTP requests answered, by route and status; how long publishes took to answer."""
    requests = CounterMetricFamily(
        "hubd_http_requests", "HTTP requests answered", labels=["route", "status"]
    )
    for (route, status), count in sorted(http.counts.items()):
        requests.add_metric([route, str(status)], count)
    yield requests
    durations = HistogramMetricFamily(
        "hubd_publish_duration_seconds",
        "Time from a POST /v1/events request arriving to its answer being sent, by status "
        "class (2xx: accepted; 4xx: refused; 5xx: draining, backplane unavailable, ...)",
        labels=["status_class"],
    )
    for status_class, histogram in sorted(http.publish_durations.items()):
        durations.add_metric([status_class], _buckets(histogram), histogram.sum)
    yield durations


def _history_metrics(store: HistoryStore) -> Iterator[Metric]:
    """What the history file (`hub.history_path`) wrote and what it could not: dropped
    (its write queue overflowed) and lost (a write failed) events leave a hole that makes
    resumes across it after a restart incomplete."""
    yield GaugeMetricFamily(
        "hubd_history_file_pending",
        "Events queued for the history file, not written yet",
        value=store.pending,
    )
    for name, help_text, value in (
        ("written", "Events written to the history file", store.written),
        (
            "dropped",
            "Events the history file's write queue dropped (full: drop_oldest)",
            store.dropped,
        ),
        ("lost", "Events the history file failed to write (I/O error, disk full)", store.lost),
    ):
        yield CounterMetricFamily(f"hubd_history_file_events_{name}", help_text, value=value)


def _redis_metrics(backplane: Backplane, hub: Hub) -> Iterator[Metric]:
    """A Redis node's failures and reconnects, how far behind the cluster it is, and what
    its subscribers were told it lost (the in-memory hub has no such figures; the Redis
    backplane is not imported here, so its attributes are looked up)."""
    lag = getattr(backplane, "lag", None)
    cutoffs = getattr(backplane, "lag_cutoffs", None)
    gaps = getattr(backplane, "seq_gaps", None)
    errors = getattr(backplane, "errors", None)
    reconnects = getattr(backplane, "reconnects", None)
    if not isinstance(lag, int):
        return
    if isinstance(errors, dict):
        by_kind = CounterMetricFamily(
            "hubd_backplane_errors",
            "Redis failures met by the connection loop (a lost connection, a failed "
            "attempt) and by requests, by kind: connection, timeout, auth, loading, "
            "reply (an error reply: out of memory, read-only, ...), data_lost (Redis "
            "found holding a new epoch: it lost hubd's data)",
            labels=["kind"],
        )
        for kind, count in sorted(errors.items()):
            by_kind.add_metric([kind], count)
        yield by_kind
    if isinstance(reconnects, int):
        yield CounterMetricFamily(
            "hubd_backplane_reconnects",
            "Times this node connected to Redis again after losing its connection or "
            "failing to connect (the first connection at start not included)",
            value=reconnects,
        )
    notices = CounterMetricFamily(
        "hubd_missed_notices",
        "events_dropped notices sent because events may never have reached this node "
        "(one per connection told), by reason",
        labels=["reason"],
    )
    for reason, count in sorted(hub.missed_notices.items()):
        notices.add_metric([reason], count)
    yield notices
    yield GaugeMetricFamily(
        "hubd_backplane_lag",
        "Events the cluster had numbered that this node had not delivered yet, at the "
        "last check (every 0.1 s while events flow)",
        value=lag,
    )
    if isinstance(cutoffs, int):
        yield CounterMetricFamily(
            "hubd_backplane_lag_cutoffs",
            "Times this node fell more than backplane.max_lag events behind, dropped its "
            "subscription and caught up from the streams",
            value=cutoffs,
        )
    if isinstance(gaps, int):
        yield CounterMetricFamily(
            "hubd_backplane_seq_gaps",
            "Gaps in the event numbering on one subscription (numbers taken by a publish "
            "Redis stopped part-way; nothing was delivered for them anywhere)",
            value=gaps,
        )


class Metrics:
    """The registry `/metrics` renders."""

    def __init__(self, hub: Hub, http: HttpCounts, backplane: Backplane | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = HubCollector(hub, http, backplane)
        self.registry.register(self._collector)
        # process_resident_memory_bytes, process_open_fds, process_max_fds,
        # process_cpu_seconds_total, ... (Linux), python_info and python_gc_*.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def watch_history(self, store: HistoryStore) -> None:
        """Report the history file's figures from now on."""
        self._collector.history = store

    def render(self) -> bytes:
        return generate_latest(self.registry)
