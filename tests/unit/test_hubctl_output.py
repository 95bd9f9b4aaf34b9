"""What hubctl prints: aligned event lines for a terminal, the raw envelope as one JSON
line for pipes, aligned tables, and plain words for subscription notices."""

from __future__ import annotations

import json
from typing import Any

from hubd.client import Connected, Event, FrameError, Gap, Reconnecting, Resumed
from hubd.hubctl.output import EventLines, json_line, notice_line, printable, table


def event(channel: str, message: str, body: Any = None, **extra: Any) -> Event:
    raw: dict[str, Any] = {
        "id": "ab" * 32,
        "event_type": channel,
        "timestamp": "2026-11-28T14:35:03.600288Z",
        "message": message,
        **({"body": body} if body is not None else {}),
        **extra,
    }
    return Event.from_envelope(raw)


def test_event_lines_align_channel_and_message_columns() -> None:
    lines = EventLines(["pdfm", "orchestrator", "health", "global"])
    first = lines.line(event("pdfm", "VM_STATE_CHANGED", {"vm": "vm-1", "state": "running"}))
    second = lines.line(event("orchestrator", "NODE_JOINED", {"node": "n-7"}))
    assert first.index("VM_STATE_CHANGED") == second.index("NODE_JOINED")
    assert first.index('{"vm"') == second.index('{"node"')
    assert first.endswith('{"vm":"vm-1","state":"running"}')  # compact body JSON
    # Local time of day, with milliseconds, first.
    assert first[2] == ":" and first[5] == ":" and first[8] == "."


def test_event_line_without_body_has_no_trailing_space() -> None:
    line = EventLines(["pdfm"]).line(event("pdfm", "PING"))
    assert line.endswith("PING") and line == line.rstrip()


def test_json_line_is_the_envelope_as_received() -> None:
    ev = event("pdfm", "X", {"a": [1, 2]}, future_field="kept")
    line = json_line(ev)
    assert "\n" not in line
    assert json.loads(line) == ev.raw
    assert json.loads(line)["future_field"] == "kept"


def test_table_columns_are_aligned_without_trailing_spaces() -> None:
    lines = table(["A", "LONG HEADER", "C"], [["xxxxx", "y", ""], ["z", "w", "v"]])
    assert lines[0].index("LONG HEADER") == lines[1].index("y") == lines[2].index("w")
    assert all(line == line.rstrip() for line in lines)


def test_notices_in_words() -> None:
    assert (
        notice_line(Connected("c1", ("pdfm", "global"), None, 0))
        == "subscribed to pdfm, global as client c1"
    )
    assert "reconnecting in 1.5 s (attempt 2)" in notice_line(Reconnecting(2, 1.5, "1006"))
    assert "without loss" in notice_line(Resumed("e1", 3))
    missed = notice_line(Gap("history_incomplete", "e1", 0))
    assert missed.startswith("warning: events may have been missed") and "e1" in missed
    assert "dropped 4" in notice_line(Gap("dropped_by_server", None, dropped=4))


def test_terminal_lines_escape_control_characters() -> None:
    """A publisher's channel, message or body cannot send escape sequences, carriage
    returns or bidirectional overrides to the terminal."""
    lines = EventLines(["pdfm"])
    ev = event("pdfm", "\x1b[2J\rGOT\u202eYOU", {"note": "\x9b31m\x7f", "ok": "é€"})
    line = lines.line(ev)
    assert not any(c in line for c in "\x1b\r\x9b\x7f\u202e")
    assert "\\x1b[2J\\x0dGOT\\u202eYOU" in line
    assert "\\x9b31m\\x7f" in line and "é€" in line  # printable text kept as it is
    # JSON lines are unchanged: the envelope as received.
    assert json.loads(json_line(ev))["message"] == "\x1b[2J\rGOT\u202eYOU"


def test_notices_escape_the_servers_words() -> None:
    line = notice_line(FrameError("r1", "bad\x1b]0;title\x07"))
    assert "\x1b" not in line and "\x07" not in line
    assert printable("plain text") == "plain text"


def test_a_409_while_reconnecting_is_not_called_a_lost_connection() -> None:
    line = notice_line(Reconnecting(3, 2.0, "409 ip_in_use: a connection from 10.0.0.1"))
    assert "still counts a subscriber connection from this address" in line
    assert "retrying in 2.0 s (attempt 3)" in line
    assert not line.startswith("connection lost")
