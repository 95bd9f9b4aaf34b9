"""Logging: one line per record on stderr, for a terminal, the journal, or a log shipper.

- On a terminal: `2026-11-28T16:56:42.123Z INFO    hubd.connections: connected client_id=…`
- When stderr is the journal (`$JOURNAL_STREAM` names it): each line starts with its syslog
  priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug) and carries no timestamp
  (the journal stamps it), so `journalctl -u hubd -p warning` filters by level.
- `[log] format = "json"`: one JSON object per line with `ts`, `level`, `logger`, `msg`
  and, for events logged with `event()`, `event` and each field as its own key.

Records never span lines: newlines inside a message or traceback are written as `\\n`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import msgspec
import trio

# syslog priorities as journald reads them from a "<N>" line prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round to the next)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class Event:
    """A log message made of an event name and key=value fields, formatted lazily."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: Mapping[str, object]) -> None:
        self.name = name
        self.fields = fields

    def __str__(self) -> str:
        parts = [self.name]
        for key, value in self.fields.items():
            parts.append(f"{key}={_text(value)}")
        return " ".join(parts)


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, frozenset, set)):
        return ",".join(str(v) for v in value) or "-"
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return msgspec.json.encode(text).decode()
    return text


def event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log a structured event: text `name k=v ...`, or in JSON `event` and one key per field."""
    if logger.isEnabledFor(level):
        logger.log(level, Event(name, fields))


class RateLimitedLog:
    """Structured events of one kind (say refused handshakes), at most `limit` lines per
    `interval` seconds, so that a client repeating a refused request cannot fill the disk.

    An interval starts with the first event after the previous one ended. Events past the
    limit are counted, not logged; once their interval is over, one line says how many:
    `suppressed 37 rejected handshakes in the last 10 s` (at the highest level among them).
    It is written by the first event after the interval or, if none comes, by a timer at
    the interval's end. Time is trio's clock, so `event` must run inside `trio.run`."""

    def __init__(
        self, logger: logging.Logger, what: str, *, limit: int = 20, interval: float = 10.0
    ) -> None:
        self.logger = logger
        self.what = what
        self.limit = limit
        self.interval = interval
        self._start: float | None = None
        self._logged = 0
        self._suppressed = 0
        self._level = logging.NOTSET
        self._timer = False

    @property
    def due(self) -> float | None:
        """When the count of suppressed lines is to be logged; None if nothing is pending."""
        if self._start is None or not self._suppressed:
            return None
        return self._start + self.interval

    def event(self, level: int, name: str, **fields: object) -> bool:
        """`event(logger, level, name, **fields)` unless this interval already had `limit`
        lines. Returns whether the line was written."""
        now = trio.current_time()
        self.flush(now)
        if self._start is None:
            self._start = now
        if self._logged < self.limit:
            self._logged += 1
            event(self.logger, level, name, **fields)
            return True
        self._suppressed += 1
        self._level = max(self._level, level)
        if not self._timer:
            # A system task: it must not hold up (or die with) the handler that refused.
            self._timer = True
            trio.lowlevel.spawn_system_task(self._flush_when_due)
        return False

    def flush(self, now: float) -> None:
        """End the current interval if it is over at `now` (trio time), logging the count
        of the lines it suppressed. A clock behind the interval's start (another
        `trio.run`) ends it too."""
        start = self._start
        if start is None or start <= now < start + self.interval:
            return
        if self._suppressed:
            # Since the interval began (a timer wakes a little late, a later event much
            # later), in whole seconds. Another run's clock says nothing: the interval.
            elapsed = now - start if now >= start else self.interval
            self.logger.log(
                self._level,
                "suppressed %d %s in the last %d s",
                self._suppressed,
                self.what,
                round(elapsed),
            )
        self._start = None
        self._logged = self._suppressed = 0
        self._level = logging.NOTSET

    async def _flush_when_due(self) -> None:
        try:
            while (due := self.due) is not None:
                await trio.sleep_until(due)
                self.flush(trio.current_time())
        finally:
            self._timer = False


def _timestamp(created: float) -> str:
    t = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(created % 1 * 1000):03d}Z"


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message>` on one line; under the journal `<N><LEVEL> ...`
    without the timestamp."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message} {self.formatException(record.exc_info)}"
        line = _one_line(f"{record.levelname:<7} {record.name}: {message}")
        if self.journal:
            return f"<{priority(record.levelno)}>{line}"
        return f"{_timestamp(record.created)} {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `<N>` prefixed under the journal."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        msg = record.msg
        if isinstance(msg, Event):
            out["event"] = msg.name
            for key, value in msg.fields.items():
                out.setdefault(key, value)
        out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = msgspec.json.encode(out, enc_hook=str).decode()
        if self.journal:
            return f"<{priority(record.levelno)}>{line}"
        return line


def stderr_is_journal(
    stream: TextIO | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Whether `stream` (stderr) is connected to the journal: `$JOURNAL_STREAM` holds the
    `device:inode` of the journal's stream socket, which must match the stream's own
    (a child whose stderr was redirected elsewhere inherits the variable)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = value.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def setup_logging(
    level: str = "info", fmt: str = "text", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every record to `stream` (stderr), one line each, at `level` and above.
    Returns the handler (its formatter can be swapped on reload)."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    configure(handler, level, fmt, stream=out)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return handler


def configure(
    handler: logging.Handler, level: str, fmt: str, *, stream: TextIO | None = None
) -> None:
    """Apply a level and format to `handler` and the root logger (also used on reload)."""
    journal = stderr_is_journal(stream)
    handler.setFormatter(JsonFormatter(journal) if fmt == "json" else TextFormatter(journal))
    root = logging.getLogger()
    root.setLevel(level.upper())
    # The libraries' own info and debug chatter stays out, even at debug level (hubd logs
    # what matters of it itself); their warnings and errors come through.
    for noisy in ("hypercorn.error", "hypercorn.access", "quart.app", "quart.serving", "coredis"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
