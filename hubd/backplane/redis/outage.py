"""What a node logs while it cannot reach Redis, so that an outage of an hour is a handful
of lines, not one per reconnect attempt.

- The first failure, at once: ERROR `backplane lost: …` when the connection had been up,
  WARNING `backplane unavailable: …` when it never was (Redis down at start). Each line
  says the wait before the next attempt, jitter included.
- While Redis stays down: at most one WARNING per `REPORT_EVERY` seconds, written at a
  failed attempt, `backplane still unavailable after 2m 0s: …; 14 attempt(s) failed in
  the last 1m 0s, 17 in all; retrying in 4.21s`.
- When it is back, `ended` says how long it was down and how many attempts failed (the
  node puts it on its `backplane connected` line).

One `Outage` per node (per `Link`); time is trio's clock."""

from __future__ import annotations

import logging

import trio

from hubd.backplane.redis.options import safe_url
from hubd.logs import event

log = logging.getLogger("hubd.backplane")

# Seconds between two lines about one outage after its first.
REPORT_EVERY = 60.0


def span(seconds: float) -> str:
    """`45s`, `2m 13s`, `1h 5m`: a duration for a log line, to the second."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"


class Outage:
    """The node's current outage, if any, and what has been said about it."""

    def __init__(self, logger: logging.Logger, every: float = REPORT_EVERY) -> None:
        self.log = logger
        self.every = every
        # Trio time of the outage's first failure; None while connected (or never tried).
        self.since: float | None = None
        self.failures = 0  # failed attempts in this outage, the first included
        self._reported_at = 0.0
        self._unreported = 0  # failed attempts since the last line

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, why: str, retry_in: float, *, lost: bool) -> None:
        """A connection failed (`lost`: it had been up) or an attempt did; the next one
        comes in `retry_in` seconds."""
        now = trio.current_time()
        if self.since is None:
            self.since = self._reported_at = now
            self.failures = 1
            self._unreported = 0
            if lost:
                self.log.error(
                    "backplane lost: %s; publishes get 503 until it is back; retrying in %.2fs",
                    why,
                    retry_in,
                )
            else:
                self.log.warning("backplane unavailable: %s; retrying in %.2fs", why, retry_in)
            return
        self.failures += 1
        self._unreported += 1
        if now - self._reported_at < self.every:
            return
        self.log.warning(
            "backplane still unavailable after %s: %s; %d attempt(s) failed in the last %s, "
            "%d in all; retrying in %.2fs",
            span(now - self.since),
            why,
            self._unreported,
            span(now - self._reported_at),
            self.failures,
            retry_in,
        )
        self._reported_at = now
        self._unreported = 0

    def ended(self) -> tuple[float, int] | None:
        """Connected again: (seconds since the first failure, failed attempts), or None
        when nothing had failed."""
        if self.since is None:
            return None
        ended = (trio.current_time() - self.since, self.failures)
        self.since = None
        self.failures = self._unreported = 0
        return ended


def log_connected(outage: tuple[float, int] | None, url: str, node: str, epoch: str) -> None:
    """`backplane connected`; after an outage (`outage`: seconds down, failed attempts) at
    WARNING, with how long Redis could not be reached and how many attempts failed (the
    line that says it is back)."""
    after: dict[str, object] = {}
    if outage is not None:
        after = {"down_seconds": round(outage[0], 1), "failed_attempts": outage[1]}
    event(
        log,
        logging.INFO if outage is None else logging.WARNING,
        "backplane connected",
        url=safe_url(url),
        node=node,
        epoch=epoch,
        **after,
    )
