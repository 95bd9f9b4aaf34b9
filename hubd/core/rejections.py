"""Counting refused subscribe attempts, by status and by reason."""

from __future__ import annotations

from collections import Counter


class Rejections(Counter[int]):
    """Subscribe attempts refused before the upgrade, counted by HTTP status (as a
    Counter) and, in `reasons`, by status and reason: the error code, which tells apart
    refusals that share a status (503 `draining` or `at_capacity`). Count with `add`."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: Counter[tuple[int, str]] = Counter()

    def add(self, status: int, reason: str) -> None:
        self[status] += 1
        self.reasons[(status, reason)] += 1
