"""The resume history of a single node, kept in a file so that it survives a restart.

Without it, a restarted in-memory hub starts a new epoch with an empty history, and every
client that resumes (`?since=<id>`) is told `complete: false`. With `hub.history_path`
set, this module mirrors `History` into an SQLite file (standard-library `sqlite3`, WAL
mode) and refills it at start, continuing the same epoch and numbering.

What the file holds:

- `meta`: the epoch, `last_seq` (the highest seq issued when it was last written),
  `skipped_upto` (every resume from below it is incomplete: events up to it may be
  missing from the file), and `state`: `running` while a hub uses the file, `clean` once
  it stopped cleanly with every event written.
- `events`: each held broadcast event: seq, channel, wall-clock publish time, JSON.
- `watermarks`: per channel, the highest seq evicted (its rows are deleted, so the file
  stays within `history_size` / `history_ttl` / `history_max_bytes` like the memory).

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

import contextlib
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from hubd.core.frame import Frame
from hubd.core.history import EPOCH_HEX, SEQ_HEX, EventIds, History, Stored, new_epoch

log = logging.getLogger("hubd.history")

SCHEMA_VERSION = "1"
# After an unclean stop the numbering continues this far past the last seq written: far
# more than one node can publish between two writes (every `flush_interval`), far less
# than the 64-bit seq space (SQLite integers are signed: 2**63 - 1 at most).
UNCLEAN_JUMP = 2**32
MAX_SEQ = min(2**63 - 1, 16**SEQ_HEX - 1)
# What `kept` does when `max_pending` events wait to be written: the oldest goes. After a
# restart, a resume from before a hole is incomplete; dropping the oldest keeps the hole
# as early as possible, so resumes from recent ids (the usual ones) stay complete.
OVERFLOW_POLICY = "drop_oldest"
# At most one log line per this many seconds about failing writes (plus the first one).
LOG_EVERY = 60.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, channel TEXT NOT NULL, "
    "at REAL NOT NULL, payload BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_by_channel ON events (channel, seq)",
    "CREATE TABLE IF NOT EXISTS watermarks (channel TEXT PRIMARY KEY, "
    "evicted_upto INTEGER NOT NULL)",
)


class StoreUnusable(Exception):
    """The history file cannot be opened or written at start (missing directory,
    permissions, read-only file system, held by another process); the message says why."""


class _Corrupt(Exception):
    """The file is not a history file this version can read."""


# A queued event: (seq, channel, trio time published, JSON). A plain tuple: building it is
# the whole cost the publish path pays per event.
_Pending = tuple[int, str, float, bytes]


@dataclass(slots=True)
class _Batch:
    """One transaction's worth of work, taken from the queue at once."""

    events: list[_Pending]
    evicted: dict[str, int]
    last_seq: int
    skipped_upto: int
    wall_offset: float  # wall-clock time minus trio time, when taken
    clean: bool = False


@dataclass(slots=True)
class _Loaded:
    epoch: str
    last_seq: int
    skipped_upto: int
    clean: bool
    events: list[Stored] = field(default_factory=list)
    watermarks: dict[str, int] = field(default_factory=dict)


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
        self._queue: deque[_Pending] = deque()
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
        try:
            loaded = await trio.to_thread.run_sync(self._open_and_load)
        except _Corrupt as exc:
            aside = await trio.to_thread.run_sync(self._move_aside)
            log.error(
                "history file %r is unreadable (%s); moved it to %r and started with an "
                "empty history: resumes from before this start are incomplete",
                self.path,
                exc,
                aside,
            )
            try:
                loaded = await trio.to_thread.run_sync(self._open_and_load)
            except _Corrupt as again:
                raise StoreUnusable(f"{self.path!r} is still unreadable: {again}") from None
            self.recovered = "corrupt"
        now = trio.current_time()
        wall = self._wall()
        events = [
            Stored(e.seq, e.channel, now - max(0.0, wall - e.at), e.payload) for e in loaded.events
        ]
        history.restore(events, loaded.watermarks, loaded.skipped_upto, now)
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
        ids = EventIds(epoch, seq)
        held = history.held_seqs()
        start = _Batch(
            [],
            {c: w for c, w in history.watermarks().items() if w},
            seq,
            history.skipped_upto,
            wall - now,
        )
        gone = [e.seq for e in loaded.events if e.seq not in held]
        async with self._lock:
            try:
                await trio.to_thread.run_sync(
                    self._start_transaction, start, epoch, gone, epoch != loaded.epoch
                )
            except (sqlite3.Error, OSError) as exc:
                self._close_quietly()
                raise StoreUnusable(f"cannot write {self.path!r}: {_describe(exc)}") from None
        self._history, self._ids = history, ids
        history.observer = self
        if self.recovered == "unclean":
            log.warning(
                "history: %r was not closed cleanly (killed or crashed?): the last events "
                "before the stop may be missing, so numbering jumps to %d and resumes from "
                "before it are incomplete; %d event(s) loaded and still replayed",
                self.path,
                seq + 1,
                len(held),
            )
        else:
            log.info(
                "history: loaded %d event(s) from %r (%s), epoch %s, numbering from %d",
                len(held),
                self.path,
                self.recovered,
                epoch,
                seq + 1,
            )
        return ids

    def _open_and_load(self) -> _Loaded:
        """In a worker thread: connect, check, create the schema, read everything."""
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreUnusable(f"the directory {directory!r} of {self.path!r} does not exist")
        if os.path.isdir(self.path):
            raise StoreUnusable(f"{self.path!r} is a directory, not a file")
        existed = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreUnusable(f"cannot open {self.path!r}: {_describe(exc)}") from None
        self._conn = conn
        try:
            # One hub per file: a second process gets "database is locked" at start
            # instead of interleaving its numbering with ours. The lock also lets WAL work
            # without a shared-memory index.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreUnusable(f"{self.path!r} cannot be put in WAL mode (got {mode!r})")
            # A commit survives the process dying (it is in the WAL, in the page cache); a
            # power cut may lose the last ones, which then reads as an unclean stop.
            conn.execute("PRAGMA synchronous=NORMAL")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise _Corrupt(f"integrity check says {check[0] if check else None!r}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                if existed and conn.execute("SELECT count(*) FROM events").fetchone()[0]:
                    raise _Corrupt("it has events but no meta data")
                meta = {
                    "version": SCHEMA_VERSION,
                    "epoch": new_epoch(),
                    "last_seq": "0",
                    "skipped_upto": "0",
                    "state": "clean",
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
                self.recovered = "new"
            conn.execute("COMMIT")
            loaded = _parse_meta(meta)
            for seq, channel, at, payload in conn.execute(
                "SELECT seq, channel, at, payload FROM events ORDER BY seq"
            ):
                if not isinstance(seq, int) or not isinstance(payload, bytes):
                    raise _Corrupt(f"event row {seq!r} is malformed")
                loaded.events.append(Stored(seq, str(channel), float(at), payload))
            loaded.watermarks = {
                str(c): int(w)
                for c, w in conn.execute("SELECT channel, evicted_upto FROM watermarks")
            }
            return loaded
        except _Corrupt:
            self._close_quietly()
            raise
        except StoreUnusable:
            self._close_quietly()
            raise
        except sqlite3.Error as exc:
            self._close_quietly()
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
                raise _Corrupt(_describe(exc)) from None
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                raise StoreUnusable(
                    f"{self.path!r} is in use by another process (another hubd?)"
                ) from None
            raise StoreUnusable(f"cannot use {self.path!r}: {_describe(exc)}") from None
        except (ValueError, TypeError) as exc:
            self._close_quietly()
            raise _Corrupt(str(exc)) from None

    def _move_aside(self) -> str:
        """Rename the file (and its WAL) to `<path>.corrupt-<UTC time>`; returns the name."""
        self._close_quietly()
        aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path + suffix, aside + suffix)
        except OSError as exc:
            raise StoreUnusable(
                f"{self.path!r} is unreadable and cannot be moved aside: {exc.strerror or exc}"
            ) from None
        return aside

    def _start_transaction(self, start: _Batch, epoch: str, gone: list[int], reset: bool) -> None:
        """Delete the rows the bounds dropped at load (`gone`), record the numbering to
        continue from, and mark the file `running`: from here until `close`, a stop is
        unclean. `reset`: a new epoch, whose numbering the old watermarks know nothing of."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            if reset:
                conn.execute("DELETE FROM watermarks")
            conn.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in gone])
            self._write_marks(conn, start)
            conn.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("epoch", epoch), ("version", SCHEMA_VERSION)],
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

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
                await trio.to_thread.run_sync(_close, conn)
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

    def _take(self, clean: bool) -> _Batch:
        """Everything to write now, taken without any await (so nothing is in between)."""
        assert self._history is not None and self._ids is not None
        events = list(self._queue)
        self._queue.clear()
        evicted, self._evicted = self._evicted, {}
        skipped = max(self._history.skipped_upto, self._lost_upto)
        return _Batch(
            events, evicted, self._ids.seq, skipped, self._wall() - trio.current_time(), clean
        )

    def _write(self, batch: _Batch) -> None:
        """In a worker thread: one transaction with the batch's events, evictions and
        numbering. Events evicted while queued are inserted, then deleted, in the same
        transaction."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            offset = batch.wall_offset
            conn.executemany(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)",
                [(seq, ch, at + offset, payload) for seq, ch, at, payload in batch.events],
            )
            self._write_marks(conn, batch)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    @staticmethod
    def _write_marks(conn: sqlite3.Connection, batch: _Batch) -> None:
        for channel, upto in batch.evicted.items():
            conn.execute("DELETE FROM events WHERE channel = ? AND seq <= ?", (channel, upto))
            conn.execute(
                "INSERT INTO watermarks VALUES (?, ?) ON CONFLICT (channel) DO UPDATE SET "
                "evicted_upto = max(evicted_upto, excluded.evicted_upto)",
                (channel, upto),
            )
        conn.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [
                ("last_seq", str(batch.last_seq)),
                ("skipped_upto", str(batch.skipped_upto)),
                ("state", "clean" if batch.clean else "running"),
            ],
        )

    def _failed(self, batch: _Batch, exc: BaseException) -> None:
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
                _describe(exc),
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
            _close(conn)


def _parse_meta(meta: dict[str, str]) -> _Loaded:
    """The meta table, checked: anything unexpected means the file is not ours."""
    if meta.get("version") != SCHEMA_VERSION:
        raise _Corrupt(f"unknown format version {meta.get('version')!r}")
    epoch = meta.get("epoch", "")
    if len(epoch) != EPOCH_HEX or not all(c in "0123456789abcdef" for c in epoch):
        raise _Corrupt(f"bad epoch {epoch!r}")
    last_seq, skipped = int(meta["last_seq"]), int(meta["skipped_upto"])
    if not 0 <= last_seq <= MAX_SEQ or not 0 <= skipped <= MAX_SEQ:
        raise _Corrupt("sequence numbers out of range")
    state = meta.get("state")
    if state not in ("clean", "running"):
        raise _Corrupt(f"bad state {state!r}")
    return _Loaded(epoch, last_seq, skipped, state == "clean")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _close(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()
