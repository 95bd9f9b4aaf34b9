"""How hubctl shows things: event lines for a terminal, JSON lines for pipes, aligned
tables. Pure functions of their input (and of the local time zone)."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hubd.client import (
    ClientInfo,
    Connected,
    Event,
    FrameError,
    Gap,
    Notice,
    Reconnecting,
    Resumed,
    Stats,
    Unsubscribed,
    UnsubscribeResult,
    WhoAmI,
)

# Bidirectional overrides and isolates: they reorder what follows them on the line.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """`text` for a terminal: control characters (C0, DEL, C1: escape sequences, carriage
    returns, ...) and bidirectional overrides written as `\\x1b` / `\\u202e`, so that
    what a publisher or a server wrote cannot move the cursor, recolour or rewrite the
    screen."""
    if text.isprintable():
        return text
    return "".join(_escape(c) if _hidden(c) else c for c in text)


def _hidden(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in _BIDI


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def compact(value: Any) -> str:
    """One-line JSON, as hubd writes it (non-ASCII kept readable)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def local_time(timestamp: str, with_date: bool = False) -> str:
    """An RFC 3339 UTC timestamp in local time: `15:35:03.600`, or with the date
    `2026-11-28 15:35:03`. Unparseable input is returned as it is."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return timestamp
    if with_date:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%H:%M:%S.%f")[:-3]


class EventLines:
    """Terminal lines for events, columns aligned: local time, channel, message, body.
    Column widths only grow, so earlier lines stay aligned with later ones. Control
    characters are escaped (`printable`)."""

    def __init__(self, channels: Sequence[str] = ()) -> None:
        self.channel_width = max((len(c) for c in channels), default=8)
        self.message_width = 16

    def line(self, event: Event) -> str:
        channel, message = printable(event.event_type), printable(event.message)
        self.channel_width = max(self.channel_width, len(channel))
        self.message_width = max(self.message_width, len(message))
        parts = [
            printable(local_time(event.timestamp)),
            channel.ljust(self.channel_width),
            message.ljust(self.message_width),
        ]
        if event.body is not None:
            parts.append(printable(compact(event.body)))
        if event.client_id is not None:
            parts.append("(to this client)")
        if event.replayed:
            parts.append("(replayed)")
        return "  ".join(parts).rstrip()


def json_line(event: Event) -> str:
    """The envelope exactly as received, one JSON object per line (for jq); nothing
    escaped beyond what JSON needs."""
    return compact(event.raw)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces; no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [list(headers), *rows]
    ]


def pairs(items: Sequence[tuple[str, str]]) -> list[str]:
    """`key  value` lines with the values aligned."""
    width = max((len(k) for k, _ in items), default=0)
    return [f"{k.ljust(width)}  {v}".rstrip() for k, v in items]


def _names(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "-"


def clients_table(clients: Sequence[ClientInfo]) -> list[str]:
    if not clients:
        return ["no subscriber connections"]
    rows = [
        [
            c.client_id,
            c.principal,
            c.ip,
            local_time(c.connected_at, with_date=True),
            local_time(c.last_seen, with_date=True),
            ",".join(c.subscriptions),
            f"{c.queue_depth}/{c.queue_capacity}",
            str(c.dropped),
            " ".join(flag for flag, on in (("batch", c.batch), ("closing", c.closing)) if on),
        ]
        for c in clients
    ]
    headers = ["CLIENT ID", "PRINCIPAL", "IP", "CONNECTED", "LAST SEEN", "CHANNELS"]
    lines = table([*headers, "QUEUE", "DROPPED", "FLAGS"], rows)
    return [*lines, f"{len(clients)} connection{'s' if len(clients) != 1 else ''}"]


def duration(seconds: float) -> str:
    """`3d 04h 05m 06s`, shortest form that fits (`42.1s` under a minute)."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m {secs:02d}s"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:g} ms"


def stats_lines(stats: Stats) -> list[str]:
    latency = stats.delivery_latency
    if latency.count:
        mean = latency.sum_seconds / latency.count
        summary = (
            f"p50 <= {_ms(latency.p50_le_seconds)}, p90 <= {_ms(latency.p90_le_seconds)}, "
            f"p99 <= {_ms(latency.p99_le_seconds)} ({latency.count} deliveries, "
            f"mean {mean * 1000:.3f} ms)"
        )
    else:
        summary = "no deliveries yet"
    head = pairs(
        [
            ("uptime", duration(stats.uptime_seconds)),
            ("connections", str(stats.connections)),
            ("draining", "yes" if stats.draining else "no"),
            ("published", str(stats.published)),
            ("delivered", str(stats.delivered)),
            ("dropped", str(stats.dropped)),
            ("queued", str(stats.queued)),
            ("latency", summary),
        ]
    )
    rows = [
        [name, str(c.subscribers), str(c.published), str(c.delivered)]
        for name, c in sorted(stats.channels.items())
    ]
    return [*head, "", *table(["CHANNEL", "SUBSCRIBERS", "PUBLISHED", "DELIVERED"], rows)]


def unsubscribe_lines(result: UnsubscribeResult) -> list[str]:
    return pairs(
        [
            ("client id", result.client_id),
            ("unsubscribed", _names(result.unsubscribed)),
            ("ignored", _names(result.ignored)),
            ("subscriptions", _names(result.subscriptions)),
        ]
    )


def whoami_lines(who: WhoAmI, credential_source: str) -> list[str]:
    hidden = "(shown to the admin role only)"
    return pairs(
        [
            ("client id", who.client_id),
            ("principal", who.principal or hidden),
            ("ip", who.ip or hidden),
            ("subscriptions", _names(who.subscriptions)),
            ("credential", f"from {credential_source}"),
        ]
    )


def notice_line(notice: Notice) -> str:
    """What hubctl says on stderr about a subscription notice (control characters
    escaped: it holds the server's words)."""
    return printable(_notice_text(notice))


def _notice_text(notice: Notice) -> str:
    match notice:
        case Connected(client_id=cid, subscriptions=subs, reconnects=0):
            return f"subscribed to {_names(subs)} as client {cid}"
        case Connected(client_id=cid, resumed_from=after):
            how = f"resuming after event {after}" if after else "nothing to resume from"
            return f"reconnected as client {cid}, {how}"
        case Reconnecting(attempt=n, delay=delay, cause=cause) if cause.startswith("409 ip_in_use"):
            return (
                f"hubd still counts a subscriber connection from this address ({cause}): "
                "the lost one until it notices it is gone, or another client's; retrying in "
                f"{delay:.1f} s (attempt {n})"
            )
        case Reconnecting(attempt=n, delay=delay, cause=cause):
            return f"connection lost ({cause}); reconnecting in {delay:.1f} s (attempt {n})"
        case Resumed(replayed=n):
            return (
                f"resumed without loss: {n} event{'s' if n != 1 else ''} published while "
                "disconnected replayed"
            )
        case Gap(reason="history_incomplete", after=after, replayed=n):
            return (
                "warning: events may have been missed: the server no longer holds everything "
                f"published after event {after} (it was restarted, or its history expired "
                f"or overflowed); {n} event{'s' if n != 1 else ''} replayed"
            )
        case Gap(reason="no_resume_point"):
            return (
                "warning: events may have been missed while disconnected: none had been "
                "received yet, so there was nothing to resume from"
            )
        case Gap(dropped=dropped):
            return (
                f"warning: events were missed: the server dropped {dropped} frame(s) for this "
                "client because it read too slowly"
            )
        case Unsubscribed(unsubscribed=removed, subscriptions=left):
            return f"unsubscribed from {_names(removed)}; still subscribed to {_names(left)}"
        case FrameError(message=message):
            return f"the server refused a frame: {message}"
    return str(notice)  # a notice type newer than this function
