"""The soak's figures (bench/soak.py): least-squares slopes after the warm-up, the
flatness verdict with its tolerances, and the per-minute rows."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.soak import flatness, per_minute, slope, source_address


def samples(
    minutes: float = 10,
    every: float = 10,
    rss: Any = lambda t: 400 * 1024,
    fds: Any = lambda t: 10010,
    tasks: Any = lambda t: 20012,
    blocks: Any = lambda t: 680_000,
) -> list[dict[str, Any]]:
    """One sample every `every` seconds from t = 0 to `minutes`, each figure a function of t."""
    out = []
    for k in range(int(minutes * 60 / every) + 1):
        t = k * every
        out.append(
            {
                "t": float(t),
                "rss_kib": rss(t),
                "fds": fds(t),
                "tasks": tasks(t),
                "blocks": blocks(t),
            }
        )
    return out


def lines(result: Any) -> dict[str, Any]:
    return {line.name: line for line in result.lines}


def test_slope_is_the_least_squares_fit() -> None:
    assert slope([0, 1, 2, 3], [5, 7, 9, 11]) == pytest.approx(2.0)
    assert slope([0, 1, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.8)  # noisy: not end - start
    assert slope([0, 1, 2], [4, 4, 4]) == 0.0
    assert slope([1], [7]) == 0.0
    assert slope([2, 2, 2], [1, 2, 3]) == 0.0  # no spread in x: no slope
    with pytest.raises(ValueError):
        slope([0, 1], [1])


def test_constant_lines_are_flat() -> None:
    result = flatness(samples())
    assert result.flat and result.verdict == "flat"
    assert result.problem is None
    by = lines(result)
    assert [by[n].slope_per_min for n in ("RSS", "fds", "tasks")] == [0.0, 0.0, 0.0]
    assert by["RSS"].unit == "KiB/min" and by["fds"].unit == "fds/min"


def test_slopes_are_per_minute_and_skip_the_warm_up() -> None:
    # A steep rise during the first 2 minutes (connections settling, history filling),
    # then flat: the warm-up leaves the rise out.
    def rss(t: float) -> int:
        return 300 * 1024 + int(min(t, 120) * 800)

    result = flatness(samples(rss=rss), warmup_s=120)
    assert result.samples == 49  # t = 120, 130, ..., 600
    assert result.span_s == 480
    assert lines(result)["RSS"].slope_per_min == pytest.approx(0.0)
    assert result.flat
    # Without the warm-up the same data rises.
    early = flatness(samples(rss=rss), warmup_s=0)
    assert lines(early)["RSS"].slope_per_min > 0
    assert not early.flat and early.verdict == "not flat: RSS"


def test_rss_tolerance_is_a_percentage_of_the_mean_per_10_minutes() -> None:
    mean = 400 * 1024  # KiB
    limit = mean * 0.01 / 10  # 1 % per 10 min: 409.6 KiB/min
    below = flatness(samples(rss=lambda t: mean + (t / 60 - 6) * (limit - 5)), warmup_s=120)
    above = flatness(samples(rss=lambda t: mean + (t / 60 - 6) * (limit + 5)), warmup_s=120)
    falling = flatness(samples(rss=lambda t: mean - (t / 60 - 6) * (limit + 5)), warmup_s=120)
    assert lines(below)["RSS"].limit_per_min == pytest.approx(limit)
    assert lines(below)["RSS"].slope_per_min == pytest.approx(limit - 5)
    assert below.flat
    assert not above.flat and above.verdict == "not flat: RSS"
    assert not falling.flat  # a fall this steep is not flat either
    looser = flatness(
        samples(rss=lambda t: mean + (t / 60 - 6) * (limit + 5)),
        warmup_s=120,
        rss_pct_per_10min=2.0,
    )
    assert looser.flat


def test_one_leaked_task_or_fd_a_minute_is_not_flat() -> None:
    tasks = flatness(samples(tasks=lambda t: 20012 + t // 60))
    assert lines(tasks)["tasks"].slope_per_min == pytest.approx(1.0, abs=0.1)
    assert not tasks.flat and tasks.verdict == "not flat: tasks"
    both = flatness(samples(tasks=lambda t: 20012 + t // 60, fds=lambda t: 10010 + t // 30))
    assert both.verdict == "not flat: fds, tasks"
    assert lines(both)["fds"].limit_per_min == 0.5


def test_noise_without_a_trend_is_flat() -> None:
    # Alternating by a few tasks and descriptors (a request in flight at one sample, not
    # at the next) and RSS wobbling by 2 MiB: no trend, so flat.
    result = flatness(
        samples(
            rss=lambda t: 400 * 1024 + 2048 * math.sin(t),
            fds=lambda t: 10010 + (t // 10) % 2,
            tasks=lambda t: 20012 + 3 * ((t // 10) % 2),
        )
    )
    assert result.flat, [(line.name, line.slope_per_min) for line in result.lines]


def test_too_few_samples_after_the_warm_up_give_no_verdict() -> None:
    result = flatness(samples(minutes=2), warmup_s=120)  # only t = 120 remains
    assert result.samples == 1
    assert result.problem is not None
    assert not result.flat
    assert result.verdict.startswith("no verdict: 1 sample(s)")
    assert not flatness([], warmup_s=0).flat


def test_per_minute_picks_the_sample_nearest_each_minute() -> None:
    rows = per_minute(samples(minutes=3, every=7), 3)
    assert [r["minute"] for r in rows] == [0, 1, 2, 3]
    assert [r["t"] for r in rows] == [0.0, 63.0, 119.0, 175.0]  # the last sample is at 175
    # A run cut short has no rows for the minutes it did not reach.
    assert [r["minute"] for r in per_minute(samples(minutes=1), 10)] == [0, 1]
    assert per_minute([], 10) == []


def test_source_addresses_are_distinct_and_never_127_0_0_1() -> None:
    addresses = [source_address(i) for i in range(70000)]
    assert len(set(addresses)) == len(addresses)
    assert "127.0.0.1" not in addresses
    for address in addresses[:300] + addresses[-300:]:
        octets = [int(o) for o in address.split(".")]
        assert octets[0] == 127 and 1 <= octets[3] <= 250 and octets[1] >= 40


def test_rising_heap_blocks_are_not_flat_even_when_rss_is() -> None:
    # A leak of Python objects the allocator still serves from free pages: RSS flat,
    # the heap's block count rising 0.5 % a minute.
    result = flatness(samples(blocks=lambda t: 680_000 + 3400 * (t // 60)))
    assert lines(result)["RSS"].flat
    assert lines(result)["heap blocks"].slope_per_min == pytest.approx(3400, rel=0.1)
    assert result.verdict == "not flat: heap blocks"
