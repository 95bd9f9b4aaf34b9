"""Recent events per channel, so that a client that reconnects can resume (`?since=<id>`).

Event ids carry their position: 8 hex digits of the hub's epoch, 16 of a sequence number
that grows by one per published event across all channels, and 40 random ones (64 hex in
all, as before). A resuming client's id therefore says exactly where it stopped without
any index, and an id from another epoch (a restarted in-memory hub, another cluster) is
recognised as unknown instead of being misread.

Each channel keeps at most `size` events for at most `ttl` seconds, and all channels
together at most `max_bytes` bytes of event JSON: over it, the globally oldest events go
first, whatever their channel. What falls out is remembered only as a watermark per
channel (the highest sequence number evicted), which is all a resume needs to know
whether it is complete.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from hubd.core.frame import Frame

EPOCH_HEX = 8
SEQ_HEX = 16
_ID = re.compile(r"^[0-9a-f]{64}$")


def new_epoch() -> str:
    return os.urandom(EPOCH_HEX // 2).hex()


class EventIds:
    """Issues event ids in publish order: `(seq, id)` with `seq` 1, 2, 3, ..."""

    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: str | None = None, seq: int = 0) -> None:
        if epoch is None:
            epoch = new_epoch()
        if len(epoch) != EPOCH_HEX or not all(c in "0123456789abcdef" for c in epoch):
            raise ValueError(f"epoch must be {EPOCH_HEX} lowercase hex digits, got {epoch!r}")
        self.epoch = epoch
        self.seq = seq

    def next(self) -> tuple[int, str]:
        self.seq += 1
        return self.seq, make_id(self.epoch, self.seq)


def make_id(epoch: str, seq: int) -> str:
    return f"{epoch}{seq:0{SEQ_HEX}x}{os.urandom(20).hex()}"


def is_event_id(value: str) -> bool:
    return bool(_ID.match(value))


def parse_id(event_id: str, epoch: str) -> int | None:
    """The sequence number inside an event id of this epoch; None for any other id."""
    if not _ID.match(event_id) or not event_id.startswith(epoch):
        return None
    return int(event_id[EPOCH_HEX : EPOCH_HEX + SEQ_HEX], 16)


# What one held event counts for beyond its JSON: about what CPython spends on its Frame,
# the bytes object's header, its `_Held` record, their numbers and two deque slots
# (measured: ~300), so that a flood of tiny events is bounded too.
ENTRY_OVERHEAD = 300


class HistoryObserver(Protocol):
    """Told of every change to what a `History` holds (see `hubd.core.history_store`,
    which mirrors it to a file). Both calls come from the publish path: they must be
    cheap plain `def`s that never block."""

    def kept(self, channel: str, seq: int, frame: Frame, at: float) -> None:
        """Broadcast event `seq` of `channel` is now held (`at`: trio time published)."""

    def evicted(self, channel: str, seq: int) -> None:
        """Every event of `channel` up to `seq` is no longer held."""


@dataclass(frozen=True, slots=True)
class Stored:
    """One held event as a store gives it back at start: `at` is already trio time."""

    seq: int
    channel: str
    at: float
    payload: bytes


@dataclass(slots=True)
class _Held:
    seq: int
    at: float  # trio time it was published
    frame: Frame
    channel: str
    size: int  # bytes it counts for against max_bytes
    held: bool = True  # False once evicted (it may still sit in History._order)


@dataclass(slots=True)
class _Channel:
    entries: deque[_Held] = field(default_factory=deque)
    evicted_upto: int = 0  # highest seq no longer held (0: nothing evicted yet)


@dataclass(frozen=True, slots=True)
class Replay:
    frames: list[Frame]
    # False when events after the resume point may be missing: the id is unknown (or of
    # another epoch) or something published after it has already been evicted.
    complete: bool
    # The seq the replay covers up to (a backplane's numbering when it read its history,
    # at least the resume point): live events at or below it are not sent again.
    upto: int = 0


class History:
    """Bounded history of broadcast events. Plain `def`s; the caller passes trio time.

    Bounds: at most `size` events per channel, none older than `ttl` seconds, and at most
    `max_bytes` for all channels together, each event counting its JSON payload once plus
    `ENTRY_OVERHEAD` (a frame that has been sent also caches its WebSocket-framed copy,
    which is not counted: resident memory can approach twice `max_bytes`). Over
    `max_bytes`, the globally oldest events are evicted first. `size` or `max_bytes` 0
    keeps nothing. The bounds may be assigned directly (they apply from the next append)
    or set with `resize`, which applies them at once."""

    def __init__(self, size: int, ttl: float, max_bytes: int) -> None:
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._channels: dict[str, _Channel] = {}
        # Every held event in publish order, across channels, so that the globally oldest
        # is at the front; events evicted by their channel's own bounds stay here
        # (held False) until they reach the front or a compaction drops them.
        self._order: deque[_Held] = deque()
        self._count = 0  # events held
        self.bytes = 0  # what the held events count for against max_bytes
        # Events evicted to keep within max_bytes, and the bytes they counted for.
        self.evicted_for_bytes = 0
        self.evicted_bytes = 0
        # The highest seq published while nothing was kept (size or max_bytes 0), or that
        # a restart may have lost (see `restore`): no channel's watermark knows it, so a
        # resume from before it is incomplete.
        self._skipped_upto = 0
        # Told of every event kept and evicted (None: nobody is; the in-memory default).
        self.observer: HistoryObserver | None = None

    @property
    def skipped_upto(self) -> int:
        """Every resume from a seq below this is incomplete, whatever its channels."""
        return self._skipped_upto

    def skip_upto(self, seq: int) -> None:
        """Events up to `seq` may be missing on every channel (they were not persisted, or
        a restart cannot know): resumes from before it say `complete: false`, while the
        events still held are replayed as usual."""
        self._skipped_upto = max(self._skipped_upto, seq)

    def held_seqs(self) -> set[int]:
        """The seq of every event held now."""
        return {entry.seq for held in self._channels.values() for entry in held.entries}

    def clear(self) -> None:
        """Forget every event and watermark (a new epoch: the old seqs mean nothing)."""
        self._channels.clear()
        self._order.clear()
        self._count = 0
        self.bytes = 0
        self._skipped_upto = 0

    def watermarks(self) -> dict[str, int]:
        """Per channel, the highest seq no longer held (0: nothing evicted yet)."""
        return {name: held.evicted_upto for name, held in self._channels.items()}

    def restore(
        self, events: Iterable[Stored], watermarks: dict[str, int], skipped_upto: int, now: float
    ) -> None:
        """Refill an empty history from a store at start: `events` in seq order, each
        with its publish time in trio time. The current bounds apply as if each had just
        been published (size, max_bytes), then the ttl at `now`, so a restart never holds
        more than a running hub would. `watermarks` and `skipped_upto` are what the store
        knew to be missing; whatever the bounds drop now is added to them. The observer
        is not told (what is evicted here is the store's own data)."""
        observer, self.observer = self.observer, None
        try:
            for item in events:
                frame = Frame(item.payload, None, item.channel, item.seq)
                self.append(item.channel, item.seq, frame, min(item.at, now))
            for name, upto in watermarks.items():
                held = self._channels.get(name)
                if held is None:
                    held = self._channels[name] = _Channel()
                held.evicted_upto = max(held.evicted_upto, upto)
            self.skip_upto(skipped_upto)
            self.resize(self.size, self.ttl, self.max_bytes, now)
        finally:
            self.observer = observer

    @property
    def keeps_nothing(self) -> bool:
        return self.size <= 0 or self.max_bytes <= 0

    def append(self, channel: str, seq: int, frame: Frame, now: float) -> None:
        """Keep broadcast event `seq` of `channel`, then evict what the bounds say."""
        if self.keeps_nothing:
            self._skipped_upto = seq
            return
        held = self._channels.get(channel)
        if held is None:
            held = self._channels[channel] = _Channel()
        entry = _Held(seq, now, frame, channel, len(frame.payload) + ENTRY_OVERHEAD)
        held.entries.append(entry)
        self._order.append(entry)
        self._count += 1
        self.bytes += entry.size
        if self.observer is not None:
            self.observer.kept(channel, seq, frame, now)
        while len(held.entries) > self.size:  # a reload may have lowered the size
            self._evict(held)
        self._expire(held, now)
        self._sweep(now)

    def resize(self, size: int, ttl: float, max_bytes: int, now: float) -> None:
        """Set the bounds (a reload) and apply them at once: lowering one frees the memory
        now, not at the next publish."""
        self.size, self.ttl, self.max_bytes = size, ttl, max_bytes
        for held in self._channels.values():
            while len(held.entries) > max(size, 0):
                self._evict(held)
            self._expire(held, now)
        self._sweep(now)

    def _evict(self, held: _Channel) -> None:
        entry = held.entries.popleft()
        entry.held = False
        held.evicted_upto = entry.seq
        self._count -= 1
        self.bytes -= entry.size
        if self.observer is not None:
            self.observer.evicted(entry.channel, entry.seq)

    def _expire(self, held: _Channel, now: float) -> None:
        entries = held.entries
        oldest = now - self.ttl
        while entries and entries[0].at < oldest:
            self._evict(held)

    def _sweep(self, now: float) -> None:
        """Evict the globally oldest events while over `max_bytes` or past the ttl, and
        forget the records of evicted events at the front of `_order`."""
        order = self._order
        oldest = now - self.ttl
        while order:
            entry = order[0]
            if entry.held:
                over = self.bytes > self.max_bytes
                if not over and entry.at >= oldest:
                    break
                # The oldest held event is the front of its channel's entries: both deques
                # are in publish order, and every eviction takes from the front.
                self._evict(self._channels[entry.channel])
                if over:
                    self.evicted_for_bytes += 1
                    self.evicted_bytes += entry.size
            order.popleft()
        if len(order) > 2 * self._count + 64:
            # A channel's own bounds leave records of evicted events behind the front:
            # drop them once they outnumber held events (amortised O(1) per event).
            self._order = deque(e for e in order if e.held)

    def held(self, channel: str) -> int:
        held = self._channels.get(channel)
        return len(held.entries) if held else 0

    def replay(self, channels: Iterable[str], since: int | None, now: float) -> Replay:
        """Every held event of `channels` published after sequence number `since`, in
        publish order. `since` None (an unknown id): nothing, and incomplete."""
        if since is None or self.keeps_nothing:
            # Unknown resume point, or nothing is kept: whatever followed may be missing.
            return Replay([], False)
        complete = since >= self._skipped_upto
        picked: list[_Held] = []
        for channel in channels:
            held = self._channels.get(channel)
            if held is None:
                continue
            self._expire(held, now)
            if held.evicted_upto > since:
                complete = False
            # Entries are in seq order: skip to the first after `since` from the end,
            # since a resume is usually recent.
            tail: list[_Held] = []
            for entry in reversed(held.entries):
                if entry.seq <= since:
                    break
                tail.append(entry)
            tail.reverse()
            picked.extend(tail)
        picked.sort(key=lambda h: h.seq)
        return Replay([h.frame for h in picked], complete)
