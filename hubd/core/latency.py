"""A fixed-bucket latency histogram: cheap to update on every delivery."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds (Prometheus-style `le`), fine-grained below a millisecond.
BUCKETS: tuple[float, ...] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts observations per bucket; the last bucket is +Inf."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def observe_many(self, seconds: float, n: int) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += n
        self.count += n
        self.sum += seconds * n

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None when empty; inf past
        the last bound)."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")

    def snapshot(self) -> dict[str, object]:
        """Cumulative buckets (as Prometheus exposes them), count, sum and p50/p90/p99."""
        cumulative: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return {
            "count": self.count,
            "sum_seconds": self.sum,
            "p50_le_seconds": _bound(self.quantile(0.5)),
            "p90_le_seconds": _bound(self.quantile(0.9)),
            "p99_le_seconds": _bound(self.quantile(0.99)),
            "buckets": dict(cumulative),
        }


def _bound(value: float | None) -> float | str | None:
    """JSON has no infinity: past the last bound the quantile reads "+Inf" (None = empty)."""
    return "+Inf" if value == float("inf") else value
