"""The Redis connection loop (`connection.Link`) on trio's virtual clock, with a fake
client in place of Redis: what it logs while Redis cannot be reached (the real wait before
each retry; one line a minute while it stays down; how long it was down once back), and
the failures and reconnects it counts for /metrics. The last test does the same against a
real redis-server that is stopped and started again."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import coredis.exceptions
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from hubd.backplane import join
from hubd.backplane.redis import RedisBackplane
from hubd.backplane.redis.connection import (
    BACKOFF_MAX,
    ERROR_KINDS,
    DataLost,
    Link,
    error_kind,
)
from hubd.backplane.redis.outage import REPORT_EVERY, log_connected, span
from hubd.core.errors import HubError
from hubd.metrics import HttpCounts, Metrics
from hubd.settings import BackplaneSettings

from ..redis_server import RedisServer
from .test_contract import ALICE, WAIT, fresh_ip, make_hub

LOGGER = "hubd.backplane"
RETRY = re.compile(r"retrying in (\d+\.\d\d)s$")


class FakeClient:
    """Stands in for `coredis.Redis`: entering and leaving it does nothing."""

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class FakeRedis:
    """What a test's Redis does to each connection attempt: `outcome(n)` for the n-th
    (from 0) returns the exception it fails with, or None to let it connect (then it
    stays up until `drop` is set)."""

    def __init__(self, outcome: Callable[[int], BaseException | None]) -> None:
        self.outcome = outcome
        self.attempts: list[float] = []  # trio time of each
        self.drop = trio.Event()
        self._attempted = trio.Event()

    async def until_attempts(self, n: int) -> None:
        while len(self.attempts) < n:
            await self._attempted.wait()

    def attach(self, link: Link, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(link, "open", FakeClient)

        async def serve(client: Any) -> None:
            self.attempts.append(trio.current_time())
            self._attempted.set()
            self._attempted = trio.Event()
            failure = self.outcome(len(self.attempts) - 1)
            if failure is not None:
                raise failure
            link.up(client)
            await self.drop.wait()
            self.drop = trio.Event()
            raise coredis.exceptions.ConnectionError("Connection reset by peer")

        self.serve = serve


def refused(n: int) -> BaseException:
    return ConnectionRefusedError(111, "Connection refused")


def lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


async def run_link(
    nursery: trio.Nursery,
    redis: FakeRedis,
    monkeypatch: pytest.MonkeyPatch,
    report_every: float | None = None,
) -> Link:
    """A Link reconnecting to `redis`, running in `nursery`; `report_every` overrides
    how often an ongoing outage is logged (0: every failure)."""
    link = Link({})
    if report_every is not None:
        link.outage.every = report_every
    redis.attach(link, monkeypatch)
    nursery.start_soon(link.run, redis.serve)
    return link


async def test_each_retry_line_states_the_wait_that_follows(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    redis = FakeRedis(refused)
    # Every failure logged, so that each wait has its line.
    await run_link(nursery, redis, monkeypatch, report_every=0.0)
    await redis.until_attempts(10)
    logged = lines(caplog)
    assert logged[0][1].startswith("backplane unavailable: ConnectionRefusedError")
    waits = [float(RETRY.search(text).group(1)) for _, text in logged]  # type: ignore[union-attr]
    gaps = [b - a for a, b in zip(redis.attempts, redis.attempts[1:], strict=False)]
    assert len(gaps) == 9
    for said, took in zip(waits, gaps, strict=False):
        assert took == pytest.approx(said, abs=0.005)
    # Backoff with jitter: about 0.1 s first, doubling up to 5 s (x 0.5 to 1.5).
    assert 0.05 <= gaps[0] <= 0.15
    assert all(0.5 * BACKOFF_MAX <= g <= 1.5 * BACKOFF_MAX for g in gaps[6:])


async def test_a_long_outage_is_a_line_a_minute_and_one_when_it_is_back(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    redis = FakeRedis(lambda n: refused(n) if trio.current_time() < 600 else None)
    link = await run_link(nursery, redis, monkeypatch)
    with trio.fail_after(700):
        await link.wait_up()
    attempts = len(redis.attempts) - 1  # the last one connected
    assert attempts > 80  # a retry every 2.5 to 7.5 s once the backoff is at its cap

    logged = lines(caplog)
    first, *summaries = logged
    assert first[0] == logging.WARNING
    assert RETRY.search(first[1])
    # Ten minutes down: one line at most every REPORT_EVERY s after the first.
    assert 8 <= len(summaries) <= 600 / REPORT_EVERY
    summary = re.compile(
        r"^backplane still unavailable after (\d+)m (\d+)s: ConnectionRefusedError: "
        r"\[Errno 111\] Connection refused; (\d+) attempt\(s\) failed in the last 1m (\d+)s, "
        r"(\d+) in all; retrying in \d+\.\d\ds$"
    )
    total = 1
    for level, text in summaries:
        assert level == logging.WARNING
        m = summary.match(text)
        assert m, text
        assert int(m[4]) <= 8  # a line is due at the first attempt a minute after the last
        total += int(m[3])
        assert int(m[5]) == total  # every attempt is accounted for, once
    # Back: how long it was down and how many attempts failed.
    assert link.last_outage is not None
    down, failed = link.last_outage
    assert failed == attempts
    assert down == pytest.approx(redis.attempts[-1] - redis.attempts[0], abs=0.01)
    assert link.outage.ended() is None  # the outage is over

    log_connected(link.last_outage, BackplaneSettings(kind="redis").url, "n1", "0123abcd")
    level, text = lines(caplog)[-1]
    assert level == logging.WARNING
    assert text == (
        "backplane connected url=redis://127.0.0.1:6379/0 node=n1 epoch=0123abcd "
        f"down_seconds={round(down, 1)} failed_attempts={attempts}"
    )


async def test_a_lost_connection_is_an_error_line_and_its_retry_starts_soon(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    # Down for a while at start (the backoff grows to its cap), then up, then lost.
    redis = FakeRedis(lambda n: refused(n) if n < 8 else None)
    link = await run_link(nursery, redis, monkeypatch)
    with trio.fail_after(100):
        await link.wait_up()
    assert link.reconnects == 0  # the first connection
    caplog.clear()
    redis.drop.set()
    with trio.fail_after(100):
        await redis.until_attempts(10)
        await link.wait_up()
    (level, text), *_ = lines(caplog)
    assert level == logging.ERROR
    m = re.match(
        r"^backplane lost: ConnectionError: Connection reset by peer; publishes get 503 "
        r"until it is back; retrying in (\d\.\d\d)s$",
        text,
    )
    assert m, text
    # A fresh outage retries after about 0.1 s again, not after the 5 s reached before.
    assert redis.attempts[9] - redis.attempts[8] == pytest.approx(float(m[1]), abs=0.005)
    assert float(m[1]) <= 0.15
    assert link.reconnects == 1
    assert link.last_outage is not None and link.last_outage[1] == 1


def test_failures_are_sorted_by_kind() -> None:
    e = coredis.exceptions
    assert error_kind(ConnectionRefusedError(111, "refused")) == "connection"
    assert error_kind(e.ConnectionError("reset")) == "connection"
    assert error_kind(trio.BrokenResourceError()) == "connection"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(e.AuthenticationError("WRONGPASS")) == "auth"
    assert error_kind(e.AuthorizationError("NOPERM")) == "auth"
    assert error_kind(e.BusyLoadingError("LOADING")) == "loading"
    assert error_kind(e.ResponseError("OOM command not allowed")) == "reply"
    assert error_kind(e.ReadOnlyError("READONLY")) == "reply"
    assert error_kind(DataLost("Redis lost its data")) == "data_lost"
    kinds = {
        error_kind(x)
        for x in (OSError(), TimeoutError(), e.AuthenticationError(), e.BusyLoadingError())
    }
    assert kinds | {"reply", "data_lost"} == set(ERROR_KINDS)


async def test_failures_and_reconnects_reach_the_metrics(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures: list[BaseException] = [
        ConnectionRefusedError(111, "refused"),
        TimeoutError("timed out"),
        coredis.exceptions.AuthenticationError("WRONGPASS"),
    ]
    redis = FakeRedis(lambda n: failures[n] if n < len(failures) else None)
    node = RedisBackplane(make_hub(), BackplaneSettings(kind="redis"))
    metrics = Metrics(node.hub, HttpCounts(), node)

    def scrape() -> dict[tuple[str, str], float]:
        text = metrics.render().decode()
        return {
            (s.name, s.labels.get("kind", "")): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if family.name.startswith("hubd_backplane_")
        }

    before = scrape()
    assert {
        k: v for (n, k), v in before.items() if n == "hubd_backplane_errors_total"
    } == dict.fromkeys(ERROR_KINDS, 0.0)
    assert before[("hubd_backplane_reconnects_total", "")] == 0
    assert before[("hubd_backplane_up", "")] == 0

    redis.attach(node._link, monkeypatch)
    nursery.start_soon(node._link.run, redis.serve)
    with trio.fail_after(100):
        await node.wait_healthy()
    redis.drop.set()  # lost once
    with trio.fail_after(100):
        await redis.until_attempts(5)
        await node.wait_healthy()
    # A request that meets an error reply counts too.
    node._link.refused(coredis.exceptions.ReadOnlyError("READONLY"))
    after = scrape()
    errors = {k: v for (n, k), v in after.items() if n == "hubd_backplane_errors_total"}
    assert errors == {
        "connection": 2.0,  # refused at start, then the reset
        "timeout": 1.0,
        "auth": 1.0,
        "loading": 0.0,
        "reply": 1.0,
        "data_lost": 0.0,
    }
    assert after[("hubd_backplane_reconnects_total", "")] == 1
    assert after[("hubd_backplane_up", "")] == 1
    assert node.errors == errors


class EpochClient:
    """Answers the GETs (and the SET NX) of `RedisBackplane._epoch` from a dict."""

    def __init__(self, epoch: str) -> None:
        self.values: dict[str, bytes] = {"hubd:epoch": epoch.encode(), "hubd:seq": b"7"}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def set(self, key: str, value: str, **_: object) -> None:
        self.values.setdefault(key, value.encode())


async def test_a_new_epoch_counts_as_data_lost_once(caplog: pytest.LogCaptureFixture) -> None:
    node = RedisBackplane(make_hub(), BackplaneSettings(kind="redis"))
    await node._epoch(EpochClient("0000000a"))  # type: ignore[arg-type]
    await node._epoch(EpochClient("0000000a"))  # type: ignore[arg-type]  # reconnected
    assert node.errors["data_lost"] == 0
    # Redis came back empty: the restarted connection (a `DataLost` raised by the
    # renewal) is not counted; the new epoch found on reconnecting is.
    node._link._failed(DataLost("Redis no longer holds this cluster's epoch"), 0.1)
    await node._epoch(EpochClient("0000000b"))  # type: ignore[arg-type]
    assert node.errors == dict.fromkeys(ERROR_KINDS, 0) | {"data_lost": 1}
    assert any("has a new epoch 0000000b" in r.getMessage() for r in caplog.records)


def test_spans() -> None:
    assert [span(s) for s in (0.4, 59.4, 60, 133.2, 3599, 3600, 3725)] == [
        "0s",
        "59s",
        "1m 0s",
        "2m 13s",
        "59m 59s",
        "1h 0m",
        "1h 2m",
    ]


async def test_real_redis_down_then_back(
    nursery: trio.Nursery, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    settings = BackplaneSettings(kind="redis", url=own_redis.url, prefix="link1", lease_seconds=3)
    node = RedisBackplane(make_hub(), settings)
    await nursery.start(node.run)
    with trio.fail_after(WAIT):
        await node.wait_healthy()
    level, connected = lines(caplog)[-1]
    assert (level, connected.split(" url=")[0]) == (logging.INFO, "backplane connected")
    assert "down_seconds" not in connected

    own_redis.stop()
    with trio.fail_after(WAIT):
        while node.healthy:  # noqa: ASYNC110 - polling the node's state, no event to wait on
            await trio.sleep(0.01)
    with pytest.raises(HubError):
        await join(node, ALICE, fresh_ip(), "pdfm")
    own_redis.start()
    with trio.fail_after(WAIT):
        await node.wait_healthy()

    logged = lines(caplog)
    errors = [text for level, text in logged if level == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("backplane lost: "), logged
    assert RETRY.search(errors[0])
    level, back = logged[-1]
    assert level == logging.WARNING
    m = re.search(r" down_seconds=(\d+\.\d) failed_attempts=(\d+)$", back)
    assert back.startswith("backplane connected ") and m, back
    assert 0 < float(m[1]) < WAIT
    assert node.reconnects == 1
    assert node.errors["connection"] >= int(m[2])
