"""Reconnect delays: exponential backoff with full jitter.

Attempt n (0-based) waits a uniformly random time in [0, min(cap, base * 2**n)]. The
randomness spreads the reconnects of many clients dropped at the same moment (a server
restart) instead of having them all arrive together at every step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays for successive failed attempts; `reset()` after a connection that lasted.

    `base` and `cap` are seconds, with 0 < base <= cap."""

    base: float
    cap: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got ({self.base}, {self.cap})")

    def ceiling(self) -> float:
        """The longest the next delay can be."""
        # min() before the power would overflow a float after ~1000 attempts.
        return min(self.cap, self.base * 2.0 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
