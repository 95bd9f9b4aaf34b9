"""`python -m bench mailbox`: hubd's Mailbox against one built on a trio memory channel.

docs/design.md ("Why not a trio memory channel per subscription") compares
`hubd.core.mailbox.Mailbox` (a list-backed bounded queue) with the same interface built on
`trio.open_memory_channel` per connection. `ChannelMailbox` below is that alternative; it
is kept here, and only here, so that the comparison can be repeated. hubd does not use it.

Each measurement prints one JSON line with the median of --reps runs (the two
implementations alternate within every run, so both see the same machine state) and the
ratio channel / list:

- `empty_bytes`: bytes per empty mailbox (capacity 1000, an `on_drop` hook set, as every
  session's mailbox has one), tracemalloc over --mailboxes of them; the line also gives a
  bare `trio.open_memory_channel(1000)` pair;
- `put64_take64_ns`: ns per frame, 64 puts then one `take(64)`, over --frames frames;
- `put1_take64_ns`: ns per frame, one put then one `take(64)`;
- `put_full_drop_oldest_ns`: ns per put into a full drop_oldest mailbox of 1000;
- `create_ns`: ns per `Mailbox(1000, DROP_OLDEST)`, over --mailboxes creations.

Before measuring, `check_equivalence` runs both implementations on the same random calls
(--seeds seeds x --calls calls) and asserts identical results, counters and hook calls.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import trio

from hubd.core.mailbox import Mailbox, MailboxStats, Overflow

T = TypeVar("T")


class ChannelMailbox(Generic[T]):
    """`hubd.core.mailbox.Mailbox`'s interface over a trio memory channel, one pair per
    mailbox. It exists only to measure the alternative docs/design.md rejected.

    `put` is `send_nowait`, `take(n)` is up to n `receive_nowait`; nobody calls the
    channel's `receive()`, so, as with the list version, no writer task is parked per
    connection and `on_ready` says that frames (or a close) arrived. On a full channel
    (`trio.WouldBlock`), drop_oldest takes the oldest frame out with `receive_nowait` and
    sends the new one; disconnect closes the mailbox with its contents counted as dropped.

    What a channel cannot express is kept beside it:

    - `_head`: the one item taken before everything and never dropped (`put_head`, the
      rest of a partly written frame); a channel only appends.
    - `_tail`: a deque, created only when needed, of frames queued *behind* the channel's
      buffer. A channel's bound is fixed at creation, but `extend` (a replay) queues beyond
      it and a reload may lower `capacity` below what is queued. While the tail holds
      anything, `put` appends there too (order), and `take` moves tail frames into the
      channel as room appears. The whole queue is bounded by `capacity + _extra`, as in
      the list version.
    - `_queued`: the frames in channel and tail, counted (the channel's `statistics()`
      would be built on every `len()`).
    - `capacity` is a property: setting it opens a new channel pair with the new bound and
      moves the queued frames over, the excess into the tail.
    """

    __slots__ = (
        "_capacity",
        "_extra",
        "_head",
        "_queued",
        "_recv",
        "_send",
        "_tail",
        "closed",
        "dropped_total",
        "dropped_unreported",
        "on_drop",
        "on_ready",
        "overflowed",
        "policy",
    )

    def __init__(self, capacity: int, policy: Overflow) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._send, self._recv = trio.open_memory_channel[T](capacity)
        self._tail: deque[T] | None = None
        self._queued = 0
        self._head: T | None = None
        self._extra = 0
        self.on_ready: Callable[[], None] | None = None
        self.on_drop: Callable[[T], None] | None = None
        self.policy = policy
        self.dropped_total = 0
        self.dropped_unreported = 0
        self.overflowed = False
        self.closed = False

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"capacity must be >= 1, got {value}")
        if value == self._capacity:
            return
        items = self._drain()
        self._capacity = value
        self._send, self._recv = trio.open_memory_channel[T](value)
        self._queue(items)
        if self.closed:
            self._send.close()

    def __len__(self) -> int:
        return self._queued + (self._head is not None)

    def put_head(self, item: T) -> None:
        if self._head is not None:
            raise RuntimeError("the mailbox already holds a head item")
        self._head = item
        if self.on_ready is not None:
            self.on_ready()

    def put(self, frame: T) -> bool:
        if self.closed:
            self.dropped_total += 1
            self._dropped([frame])
            return False
        tail = self._tail
        if not tail:
            try:
                self._send.send_nowait(frame)
            except trio.WouldBlock:
                if self._queued >= self._capacity + self._extra:
                    return self._overflow(frame)
                if tail is None:  # room granted by `extend` beyond the channel's bound
                    tail = self._tail = deque()
                tail.append(frame)
        elif self._queued < self._capacity + self._extra:
            tail.append(frame)
        else:
            return self._overflow(frame)
        self._queued += 1
        if self.on_ready is not None:
            self.on_ready()
        return True

    def extend(self, frames: list[T]) -> None:
        if self.closed or not frames:
            return
        self._queue(frames)
        self._queued += len(frames)
        self._extra += len(frames)
        if self.on_ready is not None:
            self.on_ready()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._send.close()
        if self.on_ready is not None:
            self.on_ready()

    def discard(self) -> int:
        items = self._drain()
        self.dropped_total += len(items)
        self._queued = 0
        self._extra = 0
        self._head = None
        self._dropped(items)
        return len(items)

    def take(self, max_items: int) -> list[T]:
        if self._head is not None:
            head, self._head = self._head, None
            return [head]
        if not self._queued:
            return []
        n = min(max_items, self._queued)
        batch: list[T] = []
        receive_nowait = self._recv.receive_nowait
        try:
            while len(batch) < n:
                batch.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            pass
        tail = self._tail
        if tail:
            while len(batch) < n and tail:
                batch.append(tail.popleft())
            self._refill()
        self._queued -= len(batch)
        if self._extra:
            self._extra = max(0, self._extra - len(batch))
        return batch

    def take_unreported_drops(self) -> int:
        n = self.dropped_unreported
        self.dropped_unreported = 0
        return n

    def statistics(self) -> MailboxStats:
        return MailboxStats(
            depth=self._queued,
            capacity=self._capacity,
            dropped_total=self.dropped_total,
            overflowed=self.overflowed,
            closed=self.closed,
        )

    # -- internals ---------------------------------------------------------------------

    def _overflow(self, frame: T) -> bool:
        if self.policy is Overflow.DROP_OLDEST:
            tail = self._tail
            try:
                oldest = self._recv.receive_nowait()
            except trio.WouldBlock:  # a lowered bound can leave only the tail
                assert tail
                oldest = tail.popleft()
            self.dropped_total += 1
            self.dropped_unreported += 1
            self._dropped([oldest])
            if tail:
                tail.append(frame)
                self._refill()
            else:
                self._send.send_nowait(frame)  # the receive above made room
            if self.on_ready is not None:
                self.on_ready()
            return True
        self.overflowed = True
        items = self._drain()
        items.append(frame)
        self.dropped_total += len(items)
        self._queued = 0
        self._dropped(items)
        self.close()
        return False

    def _queue(self, items: list[T]) -> None:
        """Append `items` behind everything queued: into the channel while it has room
        and the tail is empty, the rest into the tail. `_queued` is the caller's."""
        tail = self._tail
        send_nowait = self._send.send_nowait
        for i, item in enumerate(items):
            if not tail:
                try:
                    send_nowait(item)
                    continue
                except trio.WouldBlock:
                    pass
            if tail is None:
                tail = self._tail = deque()
            tail.extend(items[i:])
            return

    def _refill(self) -> None:
        """Move tail frames into the channel while it has room (not once closed)."""
        tail = self._tail
        if self.closed or not tail:
            return
        send_nowait = self._send.send_nowait
        while tail:
            try:
                send_nowait(tail[0])
            except trio.WouldBlock:
                return
            tail.popleft()
        self._tail = None

    def _drain(self) -> list[T]:
        """Take everything out of channel and tail, oldest first (`_queued` untouched)."""
        out: list[T] = []
        receive_nowait = self._recv.receive_nowait
        while True:
            try:
                out.append(receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if self._tail:
            out.extend(self._tail)
        self._tail = None
        return out

    def _dropped(self, items: list[T]) -> None:
        if self.on_drop is not None:
            for item in items:
                self.on_drop(item)


Box = Mailbox[int] | ChannelMailbox[int]
Impl = type[Mailbox[Any]] | type[ChannelMailbox[Any]]
IMPLS: tuple[tuple[str, Impl], ...] = (("mailbox", Mailbox), ("channel_mailbox", ChannelMailbox))
CAPACITY = 1000


# -- equivalence ---------------------------------------------------------------------------


def check_equivalence(seeds: int = 300, calls: int = 60) -> int:
    """Run Mailbox and ChannelMailbox side by side on the same random calls (small
    capacities, both policies, replays, head items, reloads, closes) and assert that every
    result, counter and hook call is the same. Returns the number of calls checked."""
    return sum(_check_seed(seed, calls) for seed in range(seeds))


def _check_seed(seed: int, calls: int) -> int:
    rnd = random.Random(seed)
    capacity = rnd.randint(1, 6)
    policy = rnd.choice(list(Overflow))
    a: Mailbox[int] = Mailbox(capacity, policy)
    b: ChannelMailbox[int] = ChannelMailbox(capacity, policy)
    dropped_a: list[int] = []
    dropped_b: list[int] = []
    ready_a: list[int] = []
    ready_b: list[int] = []
    a.on_drop, b.on_drop = dropped_a.append, dropped_b.append
    a.on_ready = lambda: ready_a.append(len(a))
    b.on_ready = lambda: ready_b.append(len(b))
    n = 0
    for call in range(calls):
        where = (seed, call)
        op = rnd.random()
        if op < 0.45:
            n += 1
            assert a.put(n) == b.put(n), where
        elif op < 0.55:
            frames = list(range(n + 1, n + 1 + rnd.randint(0, 4)))
            n += len(frames)
            a.extend(list(frames))
            b.extend(list(frames))
        elif op < 0.75:
            k = rnd.randint(1, 5)
            assert a.take(k) == b.take(k), where
        elif op < 0.80:
            n += 1
            assert _raises(a.put_head, -n) == _raises(b.put_head, -n), where
        elif op < 0.85:
            capacity = rnd.randint(1, 6)
            a.capacity = capacity
            b.capacity = capacity
        elif op < 0.88:
            a.close()
            b.close()
        elif op < 0.90:
            assert a.discard() == b.discard(), where
        else:
            assert a.take_unreported_drops() == b.take_unreported_drops(), where
        assert len(a) == len(b), where
        assert a.statistics() == b.statistics(), where
        assert a.dropped_unreported == b.dropped_unreported, where
        assert dropped_a == dropped_b and ready_a == ready_b, where
    while True:  # what is left comes out the same, in the same order
        batch = a.take(3)
        assert batch == b.take(3), (seed, "drain")
        if not batch:
            break
    assert a.statistics() == b.statistics() and dropped_a == dropped_b, (seed, "drain")
    return calls


def _raises(fn: Callable[[int], None], arg: int) -> bool:
    try:
        fn(arg)
    except RuntimeError:
        return True
    return False


# -- micro-benchmarks ------------------------------------------------------------------


def _bytes_each(make: Callable[[], object], count: int) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        objs = [make() for _ in range(count)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before - sys.getsizeof(objs)) / count


def empty_bytes(impl: Impl, count: int) -> float:
    def make() -> Box:
        box: Box = impl(CAPACITY, Overflow.DROP_OLDEST)
        box.on_drop = lambda frame: None
        return box

    return _bytes_each(make, count)


def _timed(fn: Callable[[], int]) -> float:
    """ns per unit of `fn()`, which returns how many units it ran; gc off, as timeit."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        units = fn()
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / units


def put64_take64_ns(impl: Impl, frames: int) -> float:
    box: Box = impl(CAPACITY, Overflow.DROP_OLDEST)

    def run() -> int:
        for _ in range(frames // 64):
            for j in range(64):
                box.put(j)
            box.take(64)
        return frames // 64 * 64

    return _timed(run)


def put1_take64_ns(impl: Impl, frames: int) -> float:
    box: Box = impl(CAPACITY, Overflow.DROP_OLDEST)

    def run() -> int:
        for i in range(frames):
            box.put(i)
            box.take(64)
        return frames

    return _timed(run)


def put_full_drop_oldest_ns(impl: Impl, frames: int) -> float:
    box: Box = impl(CAPACITY, Overflow.DROP_OLDEST)
    for i in range(CAPACITY):
        box.put(i)

    def run() -> int:
        for i in range(frames):
            box.put(i)
        return frames

    return _timed(run)


def create_ns(impl: Impl, count: int) -> float:
    def run() -> int:
        for _ in range(count):
            impl(CAPACITY, Overflow.DROP_OLDEST)
        return count

    return _timed(run)


def run_micro(reps: int, frames: int, mailboxes: int) -> list[dict[str, Any]]:
    """Every measurement for both implementations, `reps` times (alternating within
    each rep); prints and returns one summary line per measurement."""
    measures: list[tuple[str, str, Callable[[Impl], float]]] = [
        ("empty_bytes", "B", lambda impl: empty_bytes(impl, mailboxes)),
        ("put64_take64_ns", "ns/frame", lambda impl: put64_take64_ns(impl, frames)),
        ("put1_take64_ns", "ns/frame", lambda impl: put1_take64_ns(impl, frames)),
        ("put_full_drop_oldest_ns", "ns/frame", lambda impl: put_full_drop_oldest_ns(impl, frames)),
        ("create_ns", "ns/mailbox", lambda impl: create_ns(impl, mailboxes)),
    ]
    lines: list[dict[str, Any]] = []
    for measure, unit, fn in measures:
        runs: dict[str, list[float]] = {name: [] for name, _ in IMPLS}
        bare: list[float] = []
        for _ in range(reps):
            for name, impl in IMPLS:
                runs[name].append(fn(impl))
            if measure == "empty_bytes":
                bare.append(_bytes_each(lambda: trio.open_memory_channel[int](CAPACITY), mailboxes))
        line: dict[str, Any] = {"scenario": "mailbox", "measure": measure, "unit": unit}
        line.update({name: round(statistics.median(v), 1) for name, v in runs.items()})
        line["channel_over_mailbox"] = round(
            statistics.median(runs["channel_mailbox"]) / statistics.median(runs["mailbox"]), 2
        )
        if bare:
            line["bare_channel_pair"] = round(statistics.median(bare), 1)
        line["reps"] = reps
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench mailbox", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--reps", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--frames", type=int, default=200_000, help="frames per timed run")
    parser.add_argument(
        "--mailboxes", type=int, default=10_000, help="mailboxes per memory and creation run"
    )
    parser.add_argument("--seeds", type=int, default=300, help="equivalence check: seeds")
    parser.add_argument("--calls", type=int, default=60, help="equivalence check: calls/seed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    checked = check_equivalence(args.seeds, args.calls)
    check = {
        "scenario": "mailbox",
        "measure": "equivalence",
        "seeds": args.seeds,
        "calls_per_seed": args.calls,
        "calls_checked": checked,
        "identical": True,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(check), flush=True)
    run_micro(args.reps, args.frames, args.mailboxes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
