"""A bounded per-connection queue of encoded frames with a named overflow policy.

The hub puts into it with a plain, never-blocking `put`; whoever writes takes frames with
`take`. Nothing waits on it: the `on_ready` hook tells the connection that frames (or a
close) arrived, so an idle connection needs no parked writer task. When the queue is full
the policy decides:

- `drop_oldest`: the oldest queued frame is discarded and counted; the writer later tells
  the client how many it missed.
- `disconnect`: the mailbox closes at once (its contents discarded and counted) and the
  connection is closed with 1013, so a slow client can never hold the publisher back.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Overflow(enum.Enum):
    DROP_OLDEST = "drop_oldest"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class MailboxStats:
    depth: int
    capacity: int
    dropped_total: int
    overflowed: bool
    closed: bool


class Mailbox(Generic[T]):
    """Bounded FIFO of frames. Not thread-safe; lives in one trio run."""

    __slots__ = (
        "_extra",
        "_head",
        "_items",
        "capacity",
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
        # A list, not a deque: an empty deque already holds a 64-slot block (~600 bytes)
        # and most connections are idle with nothing queued. `take` hands the whole list
        # over in the common case; only overflow pays for removing from the front.
        self._items: list[T] = []
        # One item that must go out before everything else and is never dropped: the
        # rest of a frame the socket took only in part.
        self._head: T | None = None
        # Room granted beyond `capacity` by `extend` (a replay), shrinking as it is taken.
        self._extra = 0
        # Called after a frame is queued or the mailbox is closed (not on a refused put).
        self.on_ready: Callable[[], None] | None = None
        # Called with every frame refused or discarded (after it is counted).
        self.on_drop: Callable[[T], None] | None = None
        self.capacity = capacity
        self.policy = policy
        self.dropped_total = 0
        # Drops the client has not been told about yet (drop_oldest only).
        self.dropped_unreported = 0
        self.overflowed = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._items) + (self._head is not None)

    def put_head(self, item: T) -> None:
        """Put `item` in front of everything, outside the capacity and the overflow
        policy: it is taken first and never dropped, even once the mailbox is closed."""
        if self._head is not None:
            raise RuntimeError("the mailbox already holds a head item")
        self._head = item
        if self.on_ready is not None:
            self.on_ready()

    def put(self, frame: T) -> bool:
        """Queue a frame without blocking.

        Returns True when the frame was queued, False when it was not (the mailbox is
        closed, or this put overflowed a `disconnect` mailbox and closed it). Every frame
        not queued, or discarded later, counts in `dropped_total`."""
        if self.closed:
            self.dropped_total += 1
            self._dropped([frame])
            return False
        items = self._items
        if len(items) >= self.capacity + self._extra:
            if self.policy is Overflow.DROP_OLDEST:
                oldest = items.pop(0)
                self.dropped_total += 1
                self.dropped_unreported += 1
                self._dropped([oldest])
            else:
                self.overflowed = True
                self.dropped_total += len(items) + 1
                self._items = []
                items.append(frame)
                self._dropped(items)
                self.close()
                return False
        items.append(frame)
        if self.on_ready is not None:
            self.on_ready()
        return True

    def extend(self, frames: list[T]) -> None:
        """Queue `frames` beyond the capacity (a replay from history, which bounds it):
        the room they take is added to the capacity until they have been taken, so they
        never push out frames queued after them."""
        if self.closed or not frames:
            return
        self._items.extend(frames)
        self._extra += len(frames)
        if self.on_ready is not None:
            self.on_ready()

    def close(self) -> None:
        """Refuse further puts. What is queued can still be taken; then `take` returns []."""
        if self.closed:
            return
        self.closed = True
        if self.on_ready is not None:
            self.on_ready()

    def discard(self) -> int:
        """Drop everything queued (counted) and return how many frames that was."""
        items = self._items
        n = len(items)
        self.dropped_total += n
        self._items = []
        self._extra = 0
        self._head = None  # the connection is gone: the rest of a frame goes nowhere
        self._dropped(items)
        return n

    def _dropped(self, items: list[T]) -> None:
        if self.on_drop is not None and items:
            for item in items:
                self.on_drop(item)

    def take(self, max_items: int) -> list[T]:
        """Take up to `max_items` frames, oldest first (the head item, if any, alone).

        Returns [] when nothing is queued; `closed` then tells whether more can come."""
        if self._head is not None:
            head, self._head = self._head, None
            return [head]
        items = self._items
        if len(items) <= max_items:
            self._items = []
            batch = items
        else:
            batch = items[:max_items]
            del items[:max_items]
        if self._extra:
            self._extra = max(0, self._extra - len(batch))
        return batch

    def take_unreported_drops(self) -> int:
        """Return and reset the count of drops not yet reported to the client."""
        n = self.dropped_unreported
        self.dropped_unreported = 0
        return n

    def statistics(self) -> MailboxStats:
        return MailboxStats(
            depth=len(self._items),
            capacity=self.capacity,
            dropped_total=self.dropped_total,
            overflowed=self.overflowed,
            closed=self.closed,
        )
