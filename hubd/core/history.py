"""Recent events per channel, so that a client that reconnects can resume (`?since=<id>`).

Event ids carry their position: 8 hex digits of the hub's epoch, 16 of a sequence number
that grows by one per published event across all channels, and 40 random ones (64 hex in
all, as before). A resuming client's id therefore says exactly where it stopped without
any index, and an id from another epoch (a restarted in-memory hub, another cluster) is
recognised as unknown instead of being misread.

Each channel keeps at most `size` events for at most `ttl` seconds. What falls out is
remembered only as a watermark (the highest sequence number evicted), which is all a
resume needs to know whether it is complete.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class _Held:
    seq: int
    at: float  # trio time it was published
    frame: Frame


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
    """Bounded per-channel history. Plain `def`s; the caller passes trio time."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._channels: dict[str, _Channel] = {}

    def append(self, channel: str, seq: int, frame: Frame, now: float) -> None:
        if self.size <= 0:
            return
        held = self._channels.get(channel)
        if held is None:
            held = self._channels[channel] = _Channel()
        entries = held.entries
        entries.append(_Held(seq, now, frame))
        while len(entries) > self.size:  # a reload may have lowered the size
            held.evicted_upto = entries.popleft().seq
        self._expire(held, now)

    def _expire(self, held: _Channel, now: float) -> None:
        entries = held.entries
        oldest = now - self.ttl
        while entries and entries[0].at < oldest:
            held.evicted_upto = entries.popleft().seq

    def held(self, channel: str) -> int:
        held = self._channels.get(channel)
        return len(held.entries) if held else 0

    def replay(self, channels: Iterable[str], since: int | None, now: float) -> Replay:
        """Every held event of `channels` published after sequence number `since`, in
        publish order. `since` None (an unknown id): nothing, and incomplete."""
        if since is None or self.size <= 0:
            # Unknown resume point, or nothing is kept: whatever followed may be missing.
            return Replay([], False)
        complete = True
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
