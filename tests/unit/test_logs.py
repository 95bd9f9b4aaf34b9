"""`hubd.logs`: syslog priorities, one line per record in text and JSON, structured events,
and the journal detection that switches to `<N>` prefixed lines without timestamps."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from hubd.logs import (
    Event,
    JsonFormatter,
    TextFormatter,
    configure,
    event,
    priority,
    setup_logging,
    stderr_is_journal,
)

# "2026-11-28T16:56:42.123Z INFO    hubd.test: ..."
TEXT_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z [A-Z]+ +\S+: ")
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LOGGER = "hubd.test.logs"


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`setup_logging` replaces the root logger's handlers: put everything back after."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {
        name: logging.getLogger(name).level
        for name in ("hypercorn.error", "hypercorn.access", "quart.app", "quart.serving")
    }
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, value in noisy.items():
        logging.getLogger(name).setLevel(value)


def record(
    msg: object = "hello",
    level: int = logging.INFO,
    args: tuple[Any, ...] = (),
    exc_info: Any = None,
) -> logging.LogRecord:
    return logging.LogRecord(LOGGER, level, __file__, 1, msg, args, exc_info)


def failing_record() -> logging.LogRecord:
    try:
        raise ZeroDivisionError("division by zero\nsecond line")
    except ZeroDivisionError:
        return record("request failed", logging.ERROR, exc_info=sys.exc_info())


def journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


# -- priorities ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        # Levels in between take the priority of the named level below them.
        (logging.WARNING + 5, 4),
        (logging.INFO + 5, 6),
        (logging.DEBUG - 5, 7),
    ],
)
def test_priority_maps_levels_to_syslog(level: int, expected: int) -> None:
    assert priority(level) == expected


# -- one line per record -------------------------------------------------------------------


def test_text_line_has_timestamp_level_logger_and_message() -> None:
    line = TextFormatter(journal=False).format(record("hello %s", args=("world",)))
    assert TEXT_LINE.match(line), line
    assert line.endswith(f" INFO    {LOGGER}: hello world")


def test_text_record_with_exception_is_one_line() -> None:
    line = TextFormatter(journal=False).format(failing_record())
    assert "\n" not in line and "\r" not in line
    assert TEXT_LINE.match(line), line
    assert f"ERROR   {LOGGER}: request failed Traceback (most recent call last):\\n" in line
    assert "ZeroDivisionError: division by zero\\nsecond line" in line


def test_text_message_with_newlines_is_one_line() -> None:
    line = TextFormatter(journal=False).format(record("first\nsecond\r\nthird"))
    assert line.endswith(": first\\nsecond\\r\\nthird")


def test_json_record_with_exception_is_one_line_and_parses() -> None:
    line = JsonFormatter(journal=False).format(failing_record())
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "error"
    assert out["logger"] == LOGGER
    assert out["msg"] == "request failed"
    assert TS.match(out["ts"]), out
    assert out["exc"].startswith("Traceback (most recent call last):\n")
    assert "ZeroDivisionError: division by zero\nsecond line" in out["exc"]


def test_json_line_carries_ts_level_logger_msg() -> None:
    out = json.loads(JsonFormatter(journal=False).format(record("a %d b", logging.WARNING, (7,))))
    assert set(out) == {"ts", "level", "logger", "msg"}
    assert TS.match(out["ts"])
    assert (out["level"], out["logger"], out["msg"]) == ("warning", LOGGER, "a 7 b")


# -- structured events ---------------------------------------------------------------------


def capture(fmt: str, level: str = "debug") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream)
    return stream


def test_event_in_json_has_each_field_as_its_own_key() -> None:
    stream = capture("json")
    event(
        logging.getLogger(LOGGER),
        logging.INFO,
        "closed",
        client_id="c-1",
        ip="127.0.0.1",
        principal="alice",
        channels=["pdfm", "global"],
        code=1009,
        reason="message too big: 5 bytes",
        extra=None,
    )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["event"] == "closed"
    assert out["client_id"] == "c-1"
    assert out["ip"] == "127.0.0.1"
    assert out["principal"] == "alice"
    assert out["channels"] == ["pdfm", "global"]
    assert out["code"] == 1009
    assert out["reason"] == "message too big: 5 bytes"
    assert out["extra"] is None
    assert (out["level"], out["logger"]) == ("info", LOGGER)
    assert out["msg"] == (
        "closed client_id=c-1 ip=127.0.0.1 principal=alice channels=pdfm,global code=1009 "
        'reason="message too big: 5 bytes" extra=-'
    )


def test_event_fields_cannot_replace_the_record_keys() -> None:
    stream = capture("json")
    fields = {"level": "x", "logger": "y", "event": "z", "ts": 1, "msg": "spoofed"}
    logging.getLogger(LOGGER).info(Event("odd", fields))
    out = json.loads(stream.getvalue())
    assert (out["level"], out["logger"], out["event"]) == ("info", LOGGER, "odd")
    assert TS.match(out["ts"])
    assert out["msg"] == "odd level=x logger=y event=z ts=1 msg=spoofed"


def test_event_fields_that_are_not_json_are_written_as_text() -> None:
    stream = capture("json")
    event(logging.getLogger(LOGGER), logging.INFO, "starting", config=Path("/etc/hubd.toml"))
    assert json.loads(stream.getvalue())["config"] == "/etc/hubd.toml"


def test_event_in_text_is_name_then_key_values_quoted_when_needed() -> None:
    stream = capture("text")
    event(
        logging.getLogger(LOGGER),
        logging.INFO,
        "closed",
        client_id="c-1",
        channels=["pdfm", "global"],
        code="peer",
        reason="client closed",
        empty="",
        none=None,
        nothing=[],
        quote='a"b',
    )
    (line,) = stream.getvalue().splitlines()
    assert TEXT_LINE.match(line), line
    assert line.endswith(
        f"INFO    {LOGGER}: closed client_id=c-1 channels=pdfm,global code=peer "
        f'reason="client closed" empty="" none=- nothing=- quote="a\\"b"'
    )


def test_event_below_the_level_is_not_formatted() -> None:
    stream = capture("text", level="warning")

    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted although the level is off")

    event(logging.getLogger(LOGGER), logging.INFO, "quiet", value=Loud())
    assert stream.getvalue() == ""


def test_configure_switches_format_and_level_of_a_running_handler() -> None:
    stream = io.StringIO()
    handler = setup_logging("info", "text", stream=stream)
    log = logging.getLogger(LOGGER)
    log.info("as text")
    configure(handler, "warning", "json")
    log.info("dropped")
    log.warning("as json")
    first, second = stream.getvalue().splitlines()
    assert TEXT_LINE.match(first) and first.endswith(": as text")
    assert json.loads(second)["msg"] == "as json"


# -- journal detection ---------------------------------------------------------------------


def test_journal_detected_when_journal_stream_names_the_stream(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream:
        assert stderr_is_journal(stream, journal_env(stream)) is True


def test_journal_not_detected_for_another_file(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream, open(tmp_path / "other", "w") as other:
        assert stderr_is_journal(stream, journal_env(other)) is False


@pytest.mark.parametrize("value", [None, "", "garbage", "0:0", "12345"])
def test_journal_not_detected_without_a_matching_variable(
    tmp_path: Path, value: str | None
) -> None:
    env = {} if value is None else {"JOURNAL_STREAM": value}
    with open(tmp_path / "err", "w") as stream:
        assert stderr_is_journal(stream, env) is False


def test_journal_half_matching_is_not_the_journal(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as stream:
        st = os.fstat(stream.fileno())
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev + 1}:{st.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}{st.st_ino}"})


def test_journal_not_detected_for_a_stream_without_descriptor() -> None:
    assert stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:1"}) is False


def test_journal_not_detected_for_a_closed_stream(tmp_path: Path) -> None:
    stream = open(tmp_path / "err", "w")  # noqa: SIM115
    env = journal_env(stream)
    stream.close()
    assert stderr_is_journal(stream, env) is False


def test_journal_detection_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "err", "w") as stream:
        assert stderr_is_journal(stream) is False
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        assert stderr_is_journal(stream) is True


def logged_under_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, journal: bool
) -> list[str]:
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        if journal:
            monkeypatch.setenv("JOURNAL_STREAM", journal_env(stream)["JOURNAL_STREAM"])
        setup_logging("debug", fmt, stream=stream)
        log = logging.getLogger(LOGGER)
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        event(log, logging.INFO, "connected", client_id="c-1")
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            log.exception("x")
    return path.read_text().splitlines()


def test_text_under_the_journal_has_priority_prefix_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = logged_under_journal(tmp_path, monkeypatch, "text", journal=True)
    assert lines[:5] == [
        f"<7>DEBUG   {LOGGER}: d",
        f"<6>INFO    {LOGGER}: i",
        f"<4>WARNING {LOGGER}: w",
        f"<3>ERROR   {LOGGER}: e",
        f"<6>INFO    {LOGGER}: connected client_id=c-1",
    ]
    assert lines[5].startswith(f"<3>ERROR   {LOGGER}: x Traceback (most recent call last):\\n")
    assert "ValueError: bad\\nvalue" in lines[5]
    assert len(lines) == 6


def test_json_under_the_journal_has_priority_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = logged_under_journal(tmp_path, monkeypatch, "json", journal=True)
    assert len(lines) == 6
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<6>", "<3>"]
    parsed = [json.loads(line[3:]) for line in lines]
    assert [p["level"] for p in parsed] == ["debug", "info", "warning", "error", "info", "error"]
    assert parsed[4]["event"] == "connected" and parsed[4]["client_id"] == "c-1"
    assert "ValueError: bad\nvalue" in parsed[5]["exc"]


def test_stale_journal_stream_keeps_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child whose stderr was redirected inherits $JOURNAL_STREAM: it must not apply."""
    with open(tmp_path / "elsewhere", "w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", journal_env(other)["JOURNAL_STREAM"])
        lines = logged_under_journal(tmp_path, monkeypatch, "text", journal=False)
    assert len(lines) == 6
    for line in lines:
        assert TEXT_LINE.match(line), line
        assert not line.startswith("<")
