"""The SQLite file behind `hubd.core.history_store.HistoryStore`: its schema, the queries
that read and write it, and the checks that tell a history file from anything else.

What the file holds:

- `meta`: the epoch, `last_seq` (the highest seq issued when it was last written),
  `skipped_upto` (every resume from below it is incomplete: events up to it may be
  missing from the file), and `state`: `running` while a hub uses the file, `clean` once
  it stopped cleanly with every event written.
- `events`: each held broadcast event: seq, channel, wall-clock publish time, JSON.
- `watermarks`: per channel, the highest seq evicted (its rows are deleted, so the file
  stays within `history_size` / `history_ttl` / `history_max_bytes` like the memory).

Every function here blocks on the disk: call it in a worker thread, never on the event
loop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass, field

from hubd.core.history import EPOCH_HEX, SEQ_HEX, Stored, new_epoch

SCHEMA_VERSION = "1"
# SQLite integers are signed: 2**63 - 1 at most, below what the id's hex digits allow.
MAX_SEQ = min(2**63 - 1, 16**SEQ_HEX - 1)

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


class Corrupt(Exception):
    """The file is not a history file this version can read."""


# A queued event: (seq, channel, trio time published, JSON). A plain tuple: building it is
# the whole cost the publish path pays per event.
Pending = tuple[int, str, float, bytes]


@dataclass(slots=True)
class Batch:
    """One transaction's worth of work, taken from the queue at once."""

    events: list[Pending]
    evicted: dict[str, int]
    last_seq: int
    skipped_upto: int
    wall_offset: float  # wall-clock time minus trio time, when taken
    clean: bool = False


@dataclass(slots=True)
class Loaded:
    """What the file held at start. `created`: the file had no meta data yet and was just
    initialised, so there was nothing to recover."""

    epoch: str
    last_seq: int
    skipped_upto: int
    clean: bool
    events: list[Stored] = field(default_factory=list)
    watermarks: dict[str, int] = field(default_factory=dict)
    created: bool = False


def connect(path: str, busy_timeout: float) -> tuple[sqlite3.Connection, bool]:
    """Open (or create) the file at `path`. Returns the connection and whether the file
    existed with content before. Raises `StoreUnusable` when it cannot be opened."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreUnusable(f"the directory {directory!r} of {path!r} does not exist")
    if os.path.isdir(path):
        raise StoreUnusable(f"{path!r} is a directory, not a file")
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    try:
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise StoreUnusable(f"cannot open {path!r}: {describe(exc)}") from None
    return conn, existed


def load(conn: sqlite3.Connection, path: str, existed: bool) -> Loaded:
    """Lock the file, check it, create the schema (and meta data in a new file) and read
    everything. Raises `Corrupt` for a file that is not ours or is damaged, and
    `StoreUnusable` for one that cannot be used (`path` names it in the message). Does
    not close `conn` on failure."""
    try:
        _prepare(conn, path)
        meta, created = _create(conn, existed)
        loaded = _parse_meta(meta)
        loaded.created = created
        for seq, channel, at, payload in conn.execute(
            "SELECT seq, channel, at, payload FROM events ORDER BY seq"
        ):
            if not isinstance(seq, int) or not isinstance(payload, bytes):
                raise Corrupt(f"event row {seq!r} is malformed")
            loaded.events.append(Stored(seq, str(channel), float(at), payload))
        loaded.watermarks = {
            str(c): int(w) for c, w in conn.execute("SELECT channel, evicted_upto FROM watermarks")
        }
        return loaded
    except sqlite3.Error as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            raise Corrupt(describe(exc)) from None
        if name.startswith("SQLITE_BUSY"):
            raise StoreUnusable(f"{path!r} is in use by another process (another hubd?)") from None
        raise StoreUnusable(f"cannot use {path!r}: {describe(exc)}") from None
    except (ValueError, TypeError) as exc:
        raise Corrupt(str(exc)) from None


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    """Take the file for this process alone, in WAL mode, and check its integrity."""
    # One hub per file: a second process gets "database is locked" at start instead of
    # interleaving its numbering with ours. The lock also lets WAL work without a
    # shared-memory index.
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise StoreUnusable(f"{path!r} cannot be put in WAL mode (got {mode!r})")
    # A commit survives the process dying (it is in the WAL, in the page cache); a power
    # cut may lose the last ones, which then reads as an unclean stop.
    conn.execute("PRAGMA synchronous=NORMAL")
    check = conn.execute("PRAGMA quick_check").fetchone()
    if check is None or check[0] != "ok":
        raise Corrupt(f"integrity check says {check[0] if check else None!r}")


def _create(conn: sqlite3.Connection, existed: bool) -> tuple[dict[str, str], bool]:
    """Create the schema where missing; returns the meta table and whether it was just
    created (a file without meta data gets a new epoch)."""
    conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        conn.execute(statement)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    created = not meta
    if created:
        if existed and conn.execute("SELECT count(*) FROM events").fetchone()[0]:
            raise Corrupt("it has events but no meta data")
        meta = {
            "version": SCHEMA_VERSION,
            "epoch": new_epoch(),
            "last_seq": "0",
            "skipped_upto": "0",
            "state": "clean",
        }
        conn.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
    conn.execute("COMMIT")
    return meta, created


def _parse_meta(meta: dict[str, str]) -> Loaded:
    """The meta table, checked: anything unexpected means the file is not ours."""
    if meta.get("version") != SCHEMA_VERSION:
        raise Corrupt(f"unknown format version {meta.get('version')!r}")
    epoch = meta.get("epoch", "")
    if len(epoch) != EPOCH_HEX or not all(c in "0123456789abcdef" for c in epoch):
        raise Corrupt(f"bad epoch {epoch!r}")
    last_seq, skipped = int(meta["last_seq"]), int(meta["skipped_upto"])
    if not 0 <= last_seq <= MAX_SEQ or not 0 <= skipped <= MAX_SEQ:
        raise Corrupt("sequence numbers out of range")
    state = meta.get("state")
    if state not in ("clean", "running"):
        raise Corrupt(f"bad state {state!r}")
    return Loaded(epoch, last_seq, skipped, state == "clean")


def move_aside(path: str) -> str:
    """Rename the file (and its WAL) to `<path>.corrupt-<UTC time>`; returns the name.
    Raises `StoreUnusable` when it cannot be renamed. The file must be closed."""
    aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    try:
        os.replace(path, aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path + suffix, aside + suffix)
    except OSError as exc:
        raise StoreUnusable(
            f"{path!r} is unreadable and cannot be moved aside: {exc.strerror or exc}"
        ) from None
    return aside


def begin(conn: sqlite3.Connection, start: Batch, epoch: str, gone: list[int], reset: bool) -> None:
    """Delete the rows the bounds dropped at load (`gone`), record the numbering to
    continue from, and mark the file `running`: from here until a clean `write`, a stop
    is unclean. `reset`: a new epoch, whose numbering the old watermarks know nothing of.
    One transaction, rolled back on failure."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        if reset:
            conn.execute("DELETE FROM watermarks")
        conn.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in gone])
        _write_marks(conn, start)
        conn.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("epoch", epoch), ("version", SCHEMA_VERSION)],
        )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def write(conn: sqlite3.Connection, batch: Batch) -> None:
    """One transaction with the batch's events, evictions and numbering, rolled back on
    failure. Events evicted while queued are inserted, then deleted, in the same
    transaction."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        offset = batch.wall_offset
        conn.executemany(
            "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)",
            [(seq, ch, at + offset, payload) for seq, ch, at, payload in batch.events],
        )
        _write_marks(conn, batch)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _write_marks(conn: sqlite3.Connection, batch: Batch) -> None:
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


def describe(exc: BaseException) -> str:
    """A short reason for a log line or an error message."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def close(conn: sqlite3.Connection) -> None:
    """Close `conn`, ignoring errors: nothing is left to write through it."""
    with contextlib.suppress(sqlite3.Error):
        conn.close()
