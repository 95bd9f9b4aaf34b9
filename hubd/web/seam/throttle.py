"""Rate-limited logging for the server: a recurring condition is logged once per interval
with a count (`Throttled`), and Hypercorn's error log passes a bounded number of records
per interval (`ThrottleFilter`), so that no client can multiply log lines."""

from __future__ import annotations

import logging
from math import inf

import trio

# The server's log keeps this name wherever its code lives: operators filter on it.
log = logging.getLogger("hubd.server")

# Repeated conditions (EMFILE, failing connections) are logged at most
# once per this many seconds, with a count of what happened in between.
LOG_INTERVAL = 10.0


class Throttled:
    """Log a recurring condition at most once per `interval` seconds of trio time: the
    first occurrence at once, later ones as a count with the latest detail."""

    __slots__ = ("_interval", "_last", "_level", "_suppressed", "_what", "total")

    def __init__(self, what: str, level: int = logging.WARNING, interval: float = LOG_INTERVAL):
        self._what = what
        self._level = level
        self._interval = interval
        self._last = -inf
        self._suppressed = 0
        self.total = 0

    def note(self, detail: str) -> None:
        self.total += 1
        now = trio.current_time()
        if now - self._last < self._interval:
            self._suppressed += 1
            return
        more = (
            f" ({self._suppressed} more in the last {now - self._last:.0f} s)"
            if self._suppressed
            else ""
        )
        self._last = now
        self._suppressed = 0
        log.log(self._level, "%s: %s%s", self._what, detail, more)


class ThrottleFilter(logging.Filter):
    """Passes at most `limit` records per `interval` seconds of trio time; the first
    record after a quiet spell says how many were held back. For Hypercorn's error log,
    whose "Error in ASGI Framework" tracebacks a client must never be able to multiply."""

    def __init__(self, limit: int = 5, interval: float = LOG_INTERVAL) -> None:
        super().__init__()
        self.limit = limit
        self.interval = interval
        self._start = -inf
        self._passed = 0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            now = trio.current_time()
        except RuntimeError:  # logged outside the trio run (start-up, exit)
            return True
        if now - self._start >= self.interval:
            if self.suppressed:
                held = self.suppressed
                record.msg = f"{record.getMessage()} ({held} more held back before this)"
                record.args = None
            self._start, self._passed, self.suppressed = now, 0, 0
        if self._passed >= self.limit:
            self.suppressed += 1
            return False
        self._passed += 1
        return True


__all__ = ["LOG_INTERVAL", "ThrottleFilter", "Throttled"]
