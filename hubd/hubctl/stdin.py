"""`hubctl publish --stdin`: one event object per line of stdin, published in batches.

A batch is sent when it holds MAX_BATCH events, when the next line would take its request
body over the byte budget, or LINGER seconds after its first line came, whichever is
first: a fast producer fills batches, a slow one's events go out within LINGER seconds.
Ids are printed, in input order, as each batch is accepted.

On SIGINT or SIGTERM, stdin is read no further; the lines already read are published and
their ids printed, then it exits with 128 + the signal's number (130, 143). A second
signal stops at once. A line that is not an event stops it after the lines before it
were published (exit 2); a failed request stops it too, saying which lines were
published, which were not, and which may or may not have been.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from hubd.client import ClientError, HubdError
from hubd.client.api import MAX_BATCH, MAX_REQUEST_BYTES, encode_event
from hubd.client.connection import unwrap
from hubd.hubctl.errors import UsageError

LINGER = 0.05
READ_SIZE = 65536
# Lines read ahead while a batch is being published.
READ_AHEAD = 64
# Where hubd's message names the refused event of a batch: "event [3]" or "$[3]".
_INDEX = re.compile(r"(?:event \[|\$\[)(\d+)\]")

Publish = Callable[[list[dict[str, Any]]], Awaitable[list[str]]]
Emit = Callable[[Sequence[str]], Awaitable[None]]
Say = Callable[[str], None]
Read = Callable[[], Awaitable[bytes]]


class LineSplitter:
    """Cuts chunks of bytes into lines (without their "\\n"), looking at each byte once.
    A line longer than `max_line` bytes is not kept: `too_long` is set instead and the
    rest of the input is ignored."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.too_long = False
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes, in order (those before a line over the limit)."""
        lines: list[bytes] = []
        start = 0
        while not self.too_long:
            end = data.find(b"\n", start)
            piece = data[start:] if end == -1 else data[start:end]
            if self._size + len(piece) > self.max_line:
                self.too_long = True
                self._parts, self._size = [], 0
                break
            if end == -1:
                if piece:
                    self._parts.append(piece)
                    self._size += len(piece)
                break
            if self._parts:
                self._parts.append(piece)
                piece = b"".join(self._parts)
                self._parts, self._size = [], 0
            lines.append(piece)
            start = end + 1
        return lines

    def finish(self) -> bytes | None:
        """The last line when the input did not end with a newline, else None."""
        if not self._parts:
            return None
        line = b"".join(self._parts)
        self._parts, self._size = [], 0
        return line


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    data: bytes | None  # None: over the length limit


def _event(line: _Line, max_line: int) -> dict[str, Any] | None:
    """The event on `line`; None for a blank line; UsageError when it is not one."""
    number = line.number
    if line.data is None:
        raise UsageError(f"stdin line {number} is longer than {max_line} bytes")
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"stdin line {number} is not UTF-8") from None
    if not text.strip():
        return None
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"stdin line {number} is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise UsageError(
            f'stdin line {number} must be a JSON object {{"event_type": ..., "message": ...}}'
        )
    return event


def _lines(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}-{last}"


class StdinPublisher:
    """Reads lines with `read` (b"" at the end), publishes them with `publish` (which
    sets `published_ids` on its exceptions, as `HubClient.publish_many` does), prints
    ids with `emit` and says what happened with `say`."""

    def __init__(
        self,
        publish: Publish,
        emit: Emit,
        say: Say,
        *,
        max_bytes: int = MAX_REQUEST_BYTES,
        max_batch: int = MAX_BATCH,
        linger: float = LINGER,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.linger = linger
        self.published = 0  # events published so far
        self.last_line = 0  # the last line taken from the input and dealt with
        self.signal: int | None = None
        self._publish = publish
        self._emit = emit
        self._say = say
        self._batch: list[dict[str, Any]] = []
        self._numbers: list[int] = []
        self._size = 2  # of the request body: "[]"
        self._deadline = math.inf
        self._in_flight: list[int] | None = None
        self._read_scope: trio.CancelScope | None = None
        self._abort = trio.CancelScope()

    def interrupt(self, signum: int) -> None:
        """A SIGINT or SIGTERM: stop reading and publish what was read; a second one
        stops at once."""
        if self.signal is None:
            self.signal = signum
            if self._read_scope is not None:
                self._read_scope.cancel()
        else:
            self._abort.cancel()

    async def run(self, read: Read) -> int:
        """Until the end of the input (0) or a signal (128 + its number). Raises
        UsageError for a line that is not an event, ClientError when a request fails,
        each after saying what was published."""
        send, receive = trio.open_memory_channel[_Line](READ_AHEAD)
        try:
            with self._abort:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, read, send)
                    await self._consume(receive)
        except BaseExceptionGroup as group:
            inner = unwrap(group)
            if inner is group:
                raise
            raise inner from None
        if self.signal is None:
            return 0
        name = signal.Signals(self.signal).name
        if self._abort.cancelled_caught:
            if self._in_flight:
                where = _lines(self._in_flight[0], self._in_flight[-1])
                self._say(
                    f"{where} may or may not have been published (stopped while waiting for "
                    f"the answer): check before re-sending {where}"
                )
            self._say(f"stopped by a second {name}: {self.published} event(s) published")
        else:
            self._say(
                f"stopped by {name}: every line up to line {self.last_line} was published "
                f"({self.published} event(s)); nothing after it was"
            )
        return 128 + self.signal

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, read: Read, send: trio.MemorySendChannel[_Line]) -> None:
        # When the consumer stops (a bad line, a failed request) the next send fails:
        # the consumer reports why, so the reader just ends.
        with contextlib.suppress(trio.BrokenResourceError):
            await self._read_lines(read, send)

    async def _read_lines(self, read: Read, send: trio.MemorySendChannel[_Line]) -> None:
        splitter = LineSplitter(self.max_bytes)
        number = 0
        async with send:
            while self.signal is None:
                scope = self._read_scope = trio.CancelScope()
                with scope:
                    data = await read()
                self._read_scope = None
                if scope.cancelled_caught:
                    break  # a signal: what was read so far is all
                if not data:
                    last = splitter.finish()
                    if last is not None:
                        await send.send(_Line(number + 1, last))
                    break
                for line in splitter.feed(data):
                    number += 1
                    await send.send(_Line(number, line))
                if splitter.too_long:
                    await send.send(_Line(number + 1, None))
                    break

    # -- batching --------------------------------------------------------------------------

    async def _consume(self, receive: trio.MemoryReceiveChannel[_Line]) -> None:
        async with receive:
            while True:
                line: _Line | None = None
                with trio.move_on_at(self._deadline):
                    try:
                        line = await receive.receive()
                    except trio.EndOfChannel:
                        break
                if line is None:
                    await self._flush()  # the batch's time is up
                else:
                    await self._take(line)
        await self._flush()

    async def _take(self, line: _Line) -> None:
        try:
            event = _event(line, self.max_bytes)
        except UsageError as exc:
            await self._flush()  # the lines before it are good
            raise UsageError(
                f"{exc}; {self.published} event(s) from the lines before were published, "
                f"nothing from line {line.number} on"
            ) from None
        self.last_line = line.number
        if event is None:
            return
        size = len(encode_event(event))
        if self._batch and (
            len(self._batch) >= self.max_batch or self._size + 1 + size > self.max_bytes
        ):
            await self._flush()
        if not self._batch:
            # A fixed deadline from the first line: a steady producer cannot put it off.
            self._deadline = trio.current_time() + self.linger
            self._size = 2 + size
        else:
            self._size += 1 + size
        self._batch.append(event)
        self._numbers.append(line.number)
        if len(self._batch) >= self.max_batch:
            await self._flush()

    async def _flush(self) -> None:
        self._deadline = math.inf
        if not self._batch:
            return
        batch, numbers = self._batch, self._numbers
        self._batch, self._numbers, self._size = [], [], 2
        self._in_flight = numbers
        try:
            ids = await self._publish(batch)
        except ClientError as exc:
            self._in_flight = None
            done = list(exc.published_ids)
            if done:
                await self._emit(done)
                self.published += len(done)
            self._report(exc, numbers[len(done) :])
            raise
        await self._emit(ids)
        self._in_flight = None
        self.published += len(ids)

    def _report(self, exc: ClientError, rest: list[int]) -> None:
        """Say what became of the lines `rest` of a batch whose publishing failed."""
        if not rest:
            return
        first, last = rest[0], rest[-1]
        where = _lines(first, last)
        before = f"{self.published} event(s) from the lines before were published"
        if exc.outcome_unknown:
            self._say(
                f"{where} may or may not have been published (no clear answer from the server): "
                f"check before re-sending {where}; {before}, nothing after line {last} was sent"
            )
            return
        if not isinstance(exc, HubdError):
            self._say(f"{where} not published (the request could not be sent); {before}")
            return
        refused = ""
        if (m := _INDEX.search(str(exc))) and int(m.group(1)) < len(rest):
            refused = f" (the refused event is on line {rest[int(m.group(1))]})"
        self._say(
            f"{where} not published (the server refused the request, all or nothing){refused}; "
            f"{before}, nothing after line {last} was sent"
        )
