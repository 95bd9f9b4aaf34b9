"""hubctl publish --stdin: lines cut once each and capped; batches cut by count and bytes,
sent a fixed time after their first line; what is published before a bad line, on a
signal, and when a request fails; stdin read without leaving a lock held at exit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from hubd.client import HubdError, NetworkError, ProtocolError
from hubd.client.api import encode_event
from hubd.hubctl import main
from hubd.hubctl.errors import UsageError
from hubd.hubctl.stdin import LineSplitter, StdinPublisher

# Long enough never to pass in a test that does not mean it to.
FOREVER = 1e9
HUBCTL = [sys.executable, "-m", "hubd.hubctl"]


def line(n: int, message: str = "M") -> bytes:
    return json.dumps({"event_type": "pdfm", "message": message, "body": {"n": n}}).encode()


class Harness:
    """A StdinPublisher fed from a memory channel, publishing into a list."""

    def __init__(self, **options: Any) -> None:
        self.chunks_in, self.chunks_out = trio.open_memory_channel[bytes](100)
        self.requests: list[tuple[float, list[dict[str, Any]]]] = []
        self.printed: list[str] = []
        self.said: list[str] = []
        self.failures: list[BaseException] = []
        self.blocked = trio.Event()
        self.block = False
        self.publisher = StdinPublisher(self.publish, self.emit, self.said.append, **options)

    async def read(self) -> bytes:
        try:
            return await self.chunks_out.receive()
        except trio.EndOfChannel:
            return b""

    async def publish(self, events: list[dict[str, Any]]) -> list[str]:
        self.requests.append((trio.current_time(), list(events)))
        if self.block:
            self.blocked.set()
            await trio.sleep_forever()
        if self.failures:
            raise self.failures.pop(0)
        return [f"id-{e['body']['n']}" for e in events]

    async def emit(self, ids: Sequence[str]) -> None:
        self.printed += ids

    async def run(self) -> int:
        return await self.publisher.run(self.read)


# -- cutting lines -------------------------------------------------------------------------


def test_lines_across_chunks() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert splitter.feed(b"g") == []
    assert splitter.finish() == b"fg"
    assert splitter.finish() is None


def test_a_line_over_the_cap_is_not_buffered() -> None:
    splitter = LineSplitter(10)
    assert splitter.feed(b"ok\n0123456") == [b"ok"]
    assert not splitter.too_long
    # The line goes over the cap while arriving: it is dropped, not kept growing.
    assert splitter.feed(b"789ab" + b"x" * 1_000_000) == []
    assert splitter.too_long
    assert splitter.finish() is None
    # A line of exactly the cap is fine.
    assert LineSplitter(3).feed(b"abc\n") == [b"abc"]


async def test_a_line_over_the_byte_budget_stops_after_the_lines_before() -> None:
    h = Harness(max_bytes=200, linger=FOREVER)
    await h.chunks_in.send(line(1) + b"\n" + b"[" + b" " * 500)
    with pytest.raises(UsageError, match="stdin line 2 is longer than 200 bytes"):
        await h.run()
    assert h.printed == ["id-1"]


# -- batches -------------------------------------------------------------------------------


async def test_a_batch_goes_out_a_fixed_time_after_its_first_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A steady producer, one line every 30 ms: the 50 ms wait is not put off by each
    new line, so batches go out every 50 ms or so, not once 1000 lines are in."""
    h = Harness(linger=0.05)

    async def producer() -> None:
        async with h.chunks_in:
            for n in range(40):
                await h.chunks_in.send(line(n) + b"\n")
                await trio.sleep(0.03)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        assert await h.run() == 0
    assert h.printed == [f"id-{n}" for n in range(40)]
    first_at, first = h.requests[0]
    assert first_at - start == pytest.approx(0.05)
    assert [e["body"]["n"] for e in first] == [0, 1]
    assert all(len(events) <= 2 for _, events in h.requests)
    assert len(h.requests) >= 20


async def test_batches_are_cut_by_count_and_by_encoded_size() -> None:
    size = len(encode_event(json.loads(line(0))))
    budget = 2 + 3 * size + 2  # "[a,b,c]": three events, not four
    h = Harness(max_bytes=budget, max_batch=1000, linger=FOREVER)
    async with h.chunks_in:
        await h.chunks_in.send(b"".join(line(n) + b"\n" for n in range(7)))
    assert await h.run() == 0
    assert [len(events) for _, events in h.requests] == [3, 3, 1]
    for _, events in h.requests:
        body = b"[" + b",".join(encode_event(e) for e in events) + b"]"
        assert len(body) <= budget

    counted = Harness(max_batch=4, linger=FOREVER)
    async with counted.chunks_in:
        await counted.chunks_in.send(b"".join(line(n) + b"\n" for n in range(9)))
    assert await counted.run() == 0
    assert [len(events) for _, events in counted.requests] == [4, 4, 1]
    assert counted.printed == [f"id-{n}" for n in range(9)]


# -- a bad line ----------------------------------------------------------------------------


async def test_a_bad_line_publishes_the_good_lines_before_it() -> None:
    h = Harness(linger=FOREVER)
    await h.chunks_in.send(line(1) + b"\n\n" + line(3) + b"\nnot json\n" + line(5) + b"\n")
    with pytest.raises(UsageError) as info:
        await h.run()
    assert h.printed == ["id-1", "id-3"]
    message = str(info.value)
    assert message.startswith("stdin line 4 is not valid JSON")
    assert "2 event(s) from the lines before were published, nothing from line 4 on" in message


# -- signals -------------------------------------------------------------------------------


async def test_a_signal_publishes_what_was_read_then_stops() -> None:
    h = Harness(linger=FOREVER)
    await h.chunks_in.send(line(1) + b"\n" + line(2) + b"\n" + line(3) + b"\n" + b'{"part')
    async with trio.open_nursery() as nursery:
        result: list[int] = []

        async def run() -> None:
            result.append(await h.run())

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        assert h.requests == []  # pending: the batch's time is not up
        h.publisher.interrupt(signal.SIGINT)
    assert result == [130]
    assert h.printed == ["id-1", "id-2", "id-3"]
    assert h.said == [
        "stopped by SIGINT: every line up to line 3 was published (3 event(s)); "
        "nothing after it was"
    ]


async def test_sigterm_exits_143() -> None:
    h = Harness(linger=FOREVER)
    h.publisher.interrupt(signal.SIGTERM)
    assert await h.run() == 143


async def test_a_second_signal_stops_at_once_and_says_what_is_unknown() -> None:
    h = Harness(linger=FOREVER)
    h.block = True
    await h.chunks_in.send(line(1) + b"\n" + line(2) + b"\n")
    async with trio.open_nursery() as nursery:
        result: list[int] = []

        async def run() -> None:
            result.append(await h.run())

        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        h.publisher.interrupt(signal.SIGINT)  # flushes lines 1-2: that request hangs
        await h.blocked.wait()
        h.publisher.interrupt(signal.SIGINT)
    assert result == [130]
    assert h.printed == []
    assert h.said[0] == (
        "lines 1-2 may or may not have been published (stopped while waiting for the answer): "
        "check before re-sending lines 1-2"
    )


# -- a failed request ----------------------------------------------------------------------


def _failing(exc: Exception, published: list[str]) -> Exception:
    exc.published_ids = published  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    "error",
    [
        HubdError(504, "publish_outcome_unknown", "the event backplane did not answer"),
        NetworkError("no answer within 10 s", request_sent=True),
        ProtocolError("POST /v1/events answered {'ids': 'odd'}"),
    ],
    ids=["504", "read-timeout", "odd-answer"],
)
async def test_an_unclear_failure_says_may_or_may_not(error: Exception) -> None:
    h = Harness(linger=FOREVER)
    h.failures.append(_failing(error, ["id-1", "id-2"]))
    async with h.chunks_in:
        await h.chunks_in.send(b"".join(line(n) + b"\n" for n in range(1, 6)))
    with pytest.raises(type(error)):
        await h.run()
    # The requests that went through before it were published: their ids are printed.
    assert h.printed == ["id-1", "id-2"]
    assert h.said == [
        "lines 3-5 may or may not have been published (no clear answer from the server): "
        "check before re-sending lines 3-5; 2 event(s) from the lines before were "
        "published, nothing after line 5 was sent"
    ]


async def test_a_refusal_says_not_published_and_names_the_refused_line() -> None:
    h = Harness(linger=FOREVER)
    refused = HubdError(400, "server_owned_channel", "event [1]: channel 'health' is ...")
    h.failures.append(_failing(refused, ["id-1"]))
    async with h.chunks_in:
        await h.chunks_in.send(b"".join(line(n) + b"\n" for n in range(1, 5)))
    with pytest.raises(HubdError):
        await h.run()
    assert h.printed == ["id-1"]
    assert h.said == [
        "lines 2-4 not published (the server refused the request, all or nothing) "
        "(the refused event is on line 3); 1 event(s) from the lines before were published, "
        "nothing after line 4 was sent"
    ]


async def test_a_request_that_could_not_be_sent_was_not_published() -> None:
    h = Harness(linger=FOREVER)
    h.failures.append(NetworkError("cannot reach http://h:1: Connection refused"))
    async with h.chunks_in:
        await h.chunks_in.send(line(1) + b"\n")
    with pytest.raises(NetworkError):
        await h.run()
    assert h.said == [
        "line 1 not published (the request could not be sent); 0 event(s) "
        "from the lines before were published"
    ]


# -- the real command, reading a pipe ------------------------------------------------------


async def test_a_bad_line_on_a_pipe_left_open_exits_2_cleanly() -> None:
    """The reading thread is still blocked on the open pipe when hubctl exits: it must
    hold no lock the interpreter needs at exit (that aborted with SIGABRT, 134)."""
    process = await trio.lowlevel.open_process(
        [*HUBCTL, "--url", "http://127.0.0.1:9", "--token", "t", "publish", "--stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stderr is not None
    err = b""
    try:
        await process.stdin.send_all(b"not json\n")
        with trio.fail_after(30):
            code = await process.wait()
            while chunk := await process.stderr.receive_some(65536):
                err += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdin.aclose()
    assert code == 2, err
    assert b"stdin line 1 is not valid JSON" in err
    assert b"Fatal Python error" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "pdfm", "X", "--max-request-bytes", "5000"],
        ["publish", "--stdin", "--max-request-bytes", "2"],
    ],
)
def test_max_request_bytes_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--url", "http://127.0.0.1:9", "--token", "t", *argv])
    assert info.value.code == 2
    assert "--max-request-bytes" in capsys.readouterr().err
