"""The resume history of a single node, kept in a file so that it survives a restart.

Without it, a restarted in-memory hub starts a new epoch with an empty history, and every
client that resumes (`?since=<id>`) is told `complete: false`. With `hub.history_path`
set, this module mirrors `History` into an SQLite file (standard-library `sqlite3`, WAL
mode; its layout and queries are in `hubd.core.history_file`) and refills it at start,
continuing the same epoch and numbering.

Writes are write-behind. The publish path only calls `kept` / `evicted` (plain `def`s,
through `HistoryObserver`), which append to a bounded in-memory queue; `run` writes what
piled up every `flush_interval` seconds in one transaction, in a worker thread
(`trio.to_thread.run_sync`): the event loop never waits for the disk, so a slow or full
disk costs history after a restart, never latency.

Honesty over completeness. Whatever may be missing from the file is recorded so that a
resume across it after a restart says `complete: false`:

- the queue is full (the disk does not keep up): its oldest event is dropped
  (`OVERFLOW_POLICY`), counted in `dropped`, and `skipped_upto` covers it;
- a transaction fails (disk full, I/O error): its events are counted in `lost` and
  `skipped_upto` covers them (written by the next transaction that succeeds);
- the process died without a clean stop (SIGKILL, power loss, os._exit): the last batch
  may be missing and clients may hold ids beyond `last_seq`. At start the numbering
  jumps `UNCLEAN_JUMP` past `last_seq`, so that no seq a client may have seen is issued
  again, and everything up to the jump counts as possibly missing; events still in the
  file are replayed.

A failure never stops the hub: the in-memory history keeps serving this process's
resumes, and only what a restart would read is affected. At start, a file that cannot be
opened is `StoreUnusable` (the caller makes it a configuration error naming
`hub.history_path`); a corrupt one is moved aside (`<path>.corrupt-<time>`) and the hub
starts empty.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable

import trio

from hubd.core import history_file
from hubd.core.frame import Frame
from hubd.core.history import EventIds, History, Stored, new_epoch
from hubd.core.history_file import (
    MAX_SEQ,
    Batch,
    Corrupt,
    Loaded,
    Pending,
    StoreUnusable,
    describe,
)

# `StoreUnusable` is raised by `HistoryStore.open`; its callers catch it from here.
__all__ = ["LOG_EVERY", "OVERFLOW_POLICY", "UNCLEAN_JUMP", "HistoryStore", "StoreUnusable"]

log = logging.getLogger("hubd.history")

# After an unclean stop the numbering continues this far past the last seq written: far
# more than one node can publish between two writes (every `flush_interval`), far less
# than the 64-bit seq space (`MAX_SEQ`).
UNCLEAN_JUMP = 2**32
# What `kept` does when `max_pending` events wait to be written: the oldest goes. After a
# restart, a resume from before a hole is incomplete; dropping the oldest keeps the hole
# as early as possible, so resumes from recent ids (the usual ones) stay complete.
OVERFLOW_POLICY = "drop_oldest"
# At most one log line per this many seconds about failing writes (plus the first one).
LOG_EVERY = 60.0


class HistoryStore:
    """Write-behind mirror of one `History` in an SQLite file. See the module docstring.

    Lifecycle: `await open(history)` once before serving (loads the file into `history`,
    returns the `EventIds` to publish with, and starts observing `history`); `run` as a
    service task (`nursery.start`); `await close()` on a clean stop, after the last
    publish. Not thread-safe beyond that: the connection is used by one worker thread
    at a time, under `_lock`."""

    def __init__(
        self,
        path: str,
        *,
        max_pending: int = 65536,
        flush_interval: float = 0.05,
        wall_clock: Callable[[], float] = time.time,
        busy_timeout: float = 2.0,
    ) -> None:
        self.path = path
        # Seconds SQLite waits for a lock another connection holds (a second hubd on the
        # same file) before the start fails with "in use by another process".
        self.busy_timeout = busy_timeout
        self.max_pending = max_pending
        self.flush_interval = flush_interval
        self._wall = wall_clock
        self._conn: sqlite3.Connection | None = None
        self._queue: deque[Pending] = deque()
        self._evicted: dict[str, int] = {}
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self._history: History | None = None
        self._ids: EventIds | None = None
        # The highest seq not written because of an overflow or a failed transaction;
        # recorded as `skipped_upto` by every transaction (it only grows, so a later write
        # never lowers what the file says is missing).
        self._lost_upto = 0
        self._closed = False
        # Counters (for logs and tests): events written, dropped by the queue's overflow
        # policy, lost in failed transactions; transactions that failed.
        self.written = 0
        self.dropped = 0
        self.lost = 0
        self.failures = 0
        self._unlogged = 0  # failures since the last log line about them
        self._logged_at: float | None = None
        # How the file was found at start: "new", "clean", "unclean" or "corrupt".
        self.recovered = ""

    # -- the publish path (HistoryObserver) ------------------------------------------------

    def kept(self, channel: str, seq: int, frame: Frame, at: float) -> None:
        """Queue a held event for the next write. Never blocks; over `max_pending`, the
        oldest queued event is dropped (`OVERFLOW_POLICY`) and counted."""
        queue = self._queue
        if len(queue) >= self.max_pending:
            lost = queue.popleft()[0]
            self.dropped += 1
            if lost > self._lost_upto:
                self._lost_upto = lost
        queue.append((seq, channel, at, frame.payload))
        self._wake.set()

    def evicted(self, channel: str, seq: int) -> None:
        """Remember that `channel` holds nothing up to `seq` (one entry per channel, so
        this never grows with the publish rate)."""
        self._evicted[channel] = seq
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- start -----------------------------------------------------------------------------

    async def open(self, history: History) -> EventIds:
        """Open or create the file, refill `history` from it and start observing it.

        Returns the ids to publish with: the stored epoch and numbering after a clean
        stop; after an unclean one, the numbering jumps `UNCLEAN_JUMP` ahead and every
        resume from before the jump is incomplete (events still held are replayed). A new
        or unreadable file gives a new epoch. The bounds of `history` apply to what is
        loaded, and what they drop is deleted from the file at once.

        Raises `StoreUnusable` when the file cannot be opened or written. A corrupt file
        is moved aside to `<path>.corrupt-<time>` (logged) and a new one is started."""
        loaded = await self._load()
        now = trio.current_time()
        wall = self._wall()
        events = [
            Stored(e.seq, e.channel, now - max(0.0, wall - e.at), e.payload) for e in loaded.events
        ]
        history.restore(events, loaded.watermarks, loaded.skipped_upto, now)
        ids = self._continue_numbering(history, loaded)
        held = history.held_seqs()
        start = Batch(
            [],
            {c: w for c, w in history.watermarks().items() if w},
            ids.seq,
            history.skipped_upto,
            wall - now,
        )
        gone = [e.seq for e in loaded.events if e.seq not in held]
        async with self._lock:
            try:
                await trio.to_thread.run_sync(
                    self._begin, start, ids.epoch, gone, ids.epoch != loaded.epoch
                )
            except (sqlite3.Error, OSError) as exc:
                self._close_quietly()
                raise StoreUnusable(f"cannot write {self.path!r}: {describe(exc)}") from None
        self._history, self._ids = history, ids
        history.observer = self
        self._log_start(ids, len(held))
        return ids

    async def _load(self) -> Loaded:
        """Read the file; a corrupt one is moved aside and a new one read instead."""
        try:
            return await trio.to_thread.run_sync(self._open_and_load)
        except Corrupt as exc:
            self._close_quietly()
            aside = await trio.to_thread.run_sync(history_file.move_aside, self.path)
            log.error(
                "history file %r is unreadable (%s); moved it to %r and started with an "
                "empty history: resumes from before this start are incomplete",
                self.path,
                exc,
                aside,
            )
        try:
            loaded = await trio.to_thread.run_sync(self._open_and_load)
        except Corrupt as again:
            raise StoreUnusable(f"{self.path!r} is still unreadable: {again}") from None
        self.recovered = "corrupt"
        return loaded

    def _open_and_load(self) -> Loaded:
        """In a worker thread: connect, check, create the schema, read everything."""
        conn, existed = history_file.connect(self.path, self.busy_timeout)
        self._conn = conn
        try:
            loaded = history_file.load(conn, self.path, existed)
        except (Corrupt, StoreUnusable):
            self._close_quietly()
            raise
        if loaded.created:
            self.recovered = "new"
        return loaded

    def _continue_numbering(self, history: History, loaded: Loaded) -> EventIds:
        """The ids to publish with after `loaded`, and `recovered` set to how the file was
        left. After an unclean stop, everything up to the jump is marked missing in
        `history`."""
        epoch, seq = loaded.epoch, loaded.last_seq
        if not loaded.clean and self.recovered != "new":
            self.recovered = "unclean"
            if seq + UNCLEAN_JUMP > MAX_SEQ:
                # The numbering cannot jump further: a new epoch makes every old id unknown
                # (incomplete), which is honest too. Takes ~2**31 unclean restarts.
                epoch, seq = new_epoch(), 0
                history.clear()
            else:
                seq += UNCLEAN_JUMP
            history.skip_upto(seq)
        elif not self.recovered:
            self.recovered = "clean"
        return EventIds(epoch, seq)

    def _begin(self, start: Batch, epoch: str, gone: list[int], reset: bool) -> None:
        """In a worker thread: `history_file.begin` on the open file."""
        history_file.begin(self._connection(), start, epoch, gone, reset)

    def _log_start(self, ids: EventIds, held: int) -> None:
        if self.recovered == "unclean":
            log.warning(
                "history: %r was not closed cleanly (killed or crashed?): the last events "
                "before the stop may be missing, so numbering jumps to %d and resumes from "
                "before it are incomplete; %d event(s) loaded and still replayed",
                self.path,
                ids.seq + 1,
                held,
            )
        else:
            log.info(
                "history: loaded %d event(s) from %r (%s), epoch %s, numbering from %d",
                held,
                self.path,
                self.recovered,
                ids.epoch,
                ids.seq + 1,
            )

    # -- writing ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what the publish path queued, one transaction per `flush_interval` at
        most, until cancelled. Never raises for a failed write (see `flush`)."""
        task_status.started()
        while not self._closed:
            await self._wake.wait()
            self._wake = trio.Event()
            # Let a batch pile up: one transaction per interval, whatever the rate.
            await trio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self, *, clean: bool = False) -> bool:
        """Write everything queued so far (and the numbering) in one transaction.

        With `clean`, also mark the file `clean`: call it only once nothing more can be
        published. Returns False when the transaction failed; its events are then
        counted in `lost`, the next successful write records them as missing, and the
        failure is logged (at most once per `LOG_EVERY` seconds)."""
        async with self._lock:
            if self._closed or self._conn is None:
                return False
            batch = self._take(clean)
            try:
                await trio.to_thread.run_sync(self._write, batch)
            except (sqlite3.Error, OSError) as exc:
                self._failed(batch, exc)
                return False
            self.written += len(batch.events)
            log.debug("history: wrote %d event(s) up to seq %d", len(batch.events), batch.last_seq)
            return True

    async def close(self) -> bool:
        """Clean stop: write everything, mark the file `clean` with the last seq, close it.
        Call it after the last publish (the hub is drained). Returns whether the clean mark
        was written; if not, the next start treats the stop as unclean."""
        if self._history is not None:
            self._history.observer = None
        ok = await self.flush(clean=True)
        async with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                await trio.to_thread.run_sync(history_file.close, conn)
        self._wake.set()
        if ok:
            log.info(
                "history: stopped cleanly, %d event(s) written in all, last seq %d",
                self.written,
                self._ids.seq if self._ids else 0,
            )
        else:
            log.error(
                "history: the final write to %r failed; the next start treats this stop as "
                "unclean (resumes from before it will be incomplete)",
                self.path,
            )
        return ok

    def _take(self, clean: bool) -> Batch:
        """Everything to write now, taken without any await (so nothing is in between)."""
        assert self._history is not None and self._ids is not None
        events = list(self._queue)
        self._queue.clear()
        evicted, self._evicted = self._evicted, {}
        skipped = max(self._history.skipped_upto, self._lost_upto)
        return Batch(
            events, evicted, self._ids.seq, skipped, self._wall() - trio.current_time(), clean
        )

    def _write(self, batch: Batch) -> None:
        """In a worker thread: `history_file.write` on the open file."""
        history_file.write(self._connection(), batch)

    def _failed(self, batch: Batch, exc: BaseException) -> None:
        """A transaction failed: what it carried is not in the file. Its events count as
        lost (and as missing after a restart); its evictions are tried again next time
        (rows that stay only cost space until the next start applies the bounds)."""
        self.failures += 1
        self.lost += len(batch.events)
        if batch.events:
            self._lost_upto = max(self._lost_upto, batch.events[-1][0])
        for channel, upto in batch.evicted.items():
            self._evicted[channel] = max(upto, self._evicted.get(channel, 0))
        self._unlogged += 1
        now = trio.current_time()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY:
            log.error(
                "history: writing %r failed (%s): %d write(s) failed and %d event(s) were "
                "not persisted since the last report (%d in all); serving goes on, and "
                "after a restart resumes across them will be incomplete",
                self.path,
                describe(exc),
                self._unlogged,
                len(batch.events),
                self.lost,
            )
            self._logged_at = now
            self._unlogged = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.OperationalError("the history file is closed")
        return self._conn

    def _close_quietly(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            history_file.close(conn)
