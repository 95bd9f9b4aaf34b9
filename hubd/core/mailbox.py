"""A bounded per-connection queue of encoded frames with a named overflow policy.

The hub puts into it with a plain, never-blocking `put`; the connection's writer task
awaits `get_batch`. When the queue is full the policy decides:

- `drop_oldest`: the oldest queued frame is discarded and counted; the writer later tells
  the client how many it missed.
- `disconnect`: the mailbox closes at once (its contents discarded and counted) and the
  connection is closed with 1013, so a slow client can never hold the publisher back.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio
from trio.lowlevel import ParkingLot

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
        "_head",
        "_items",
        "_lot",
        "capacity",
        "closed",
        "dropped_total",
        "dropped_unreported",
        "overflowed",
        "policy",
    )

    def __init__(self, capacity: int, policy: Overflow) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: deque[T] = deque()
        # One item that must go out before everything else and is never dropped: the
        # rest of a frame the socket took only in part.
        self._head: T | None = None
        self._lot = ParkingLot()
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
        if self._lot:
            self._lot.unpark()

    def put(self, frame: T) -> bool:
        """Queue a frame without blocking.

        Returns True when the frame was queued, False when it was not (the mailbox is
        closed, or this put overflowed a `disconnect` mailbox and closed it). Every frame
        not queued, or discarded later, counts in `dropped_total`."""
        if self.closed:
            self.dropped_total += 1
            return False
        items = self._items
        if len(items) >= self.capacity:
            if self.policy is Overflow.DROP_OLDEST:
                items.popleft()
                self.dropped_total += 1
                self.dropped_unreported += 1
            else:
                self.overflowed = True
                self.dropped_total += len(items) + 1
                items.clear()
                self.close()
                return False
        items.append(frame)
        if self._lot:
            self._lot.unpark()
        return True

    def close(self) -> None:
        """Refuse further puts. What is queued can still be taken; then `get_batch` returns []."""
        self.closed = True
        self._lot.unpark_all()

    def discard(self) -> int:
        """Drop everything queued (counted) and return how many frames that was."""
        n = len(self._items)
        self.dropped_total += n
        self._items.clear()
        self._head = None  # the connection is gone: the rest of a frame goes nowhere
        return n

    async def get_batch(self, max_items: int) -> list[T]:
        """Wait for at least one frame and take up to `max_items`, oldest first.

        Returns [] only once the mailbox is closed and empty."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._head is not None:
            head, self._head = self._head, None
            await trio.lowlevel.cancel_shielded_checkpoint()
            return [head]
        items = self._items
        if items:
            # Frames are waiting: still let other tasks run once, so a busy connection
            # cannot starve the rest (this is the writer's one scheduling point per write).
            await trio.lowlevel.cancel_shielded_checkpoint()
        while not items:
            if self.closed:
                return []
            await self._lot.park()
            if self._head is not None:
                head, self._head = self._head, None
                return [head]
        if len(items) <= max_items:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(max_items)]
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
