"""Reconnect delays: full jitter below an exponentially growing, capped ceiling."""

from __future__ import annotations

import random

import pytest

from hubd.client.backoff import Backoff


def test_ceiling_doubles_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_delays_are_spread_over_the_whole_range() -> None:
    backoff = Backoff(1.0, 1.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(2000)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    # Full jitter: uniform over [0, ceiling], not clustered near the ceiling.
    assert min(delays) < 0.05 and max(delays) > 0.95
    assert 0.45 < sum(delays) / len(delays) < 0.55


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(0.5, 30.0)
    for _ in range(5):
        backoff.next_delay()
    assert backoff.attempt == 5
    backoff.reset()
    assert backoff.attempt == 0 and backoff.ceiling() == 0.5


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(0.5, 30.0, attempt=5000)
    assert backoff.ceiling() == 30.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_bad_bounds_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)
