"""`hub.history_path`: the resume history kept in an SQLite file across a restart
(`hubd.core.history_store`). Each test plays one or two lifetimes of a hub on one file:
open, publish into a `History` the store observes, stop cleanly or not, open again.

Time is trio's virtual clock (`autojump_clock`) and an injected wall clock: no test
sleeps for real."""

from __future__ import annotations

import sqlite3
import textwrap
from contextlib import closing
from pathlib import Path

import pytest
import trio

from hubd import reload
from hubd.core.auth import Authenticator
from hubd.core.frame import Frame
from hubd.core.history import EventIds, History
from hubd.core.history_file import MAX_SEQ
from hubd.core.history_store import UNCLEAN_JUMP, HistoryStore, StoreUnusable
from hubd.core.hub import Hub
from hubd.metrics import HttpCounts, Metrics
from hubd.service import check_history_path, open_history
from hubd.settings import ConfigError, load_settings_text
from hubd.web.context import WebContext

from .conftest import make_settings

TTL = 3600.0


class WallClock:
    """A wall clock the test moves by hand (the store converts publish times with it)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Life:
    """One lifetime of a hub on the file: its history, the ids it publishes with, the store."""

    def __init__(self, history: History, ids: EventIds, store: HistoryStore) -> None:
        self.history = history
        self.ids = ids
        self.store = store

    def publish(self, channel: str = "pdfm", n: int = 1) -> list[int]:
        """Publish `n` broadcast events on `channel` as the hub does; returns their seqs."""
        seqs = []
        for _ in range(n):
            seq, event_id = self.ids.next()
            payload = f'{{"id":"{event_id}","event_type":"{channel}","n":{seq}}}'.encode()
            frame = Frame(payload, trio.current_time(), channel, seq)
            self.history.append(channel, seq, frame, trio.current_time())
            seqs.append(seq)
        return seqs

    def replay(self, since: int, channels: tuple[str, ...] = ("pdfm",)) -> tuple[list[int], bool]:
        replay = self.history.replay(list(channels), since, trio.current_time())
        return [f.seq for f in replay.frames], replay.complete


async def start(
    path: Path,
    *,
    size: int = 1000,
    ttl: float = TTL,
    max_bytes: int = 1 << 26,
    wall: WallClock | None = None,
    max_pending: int = 65536,
) -> Life:
    history = History(size, ttl, max_bytes)
    store = HistoryStore(str(path), max_pending=max_pending, wall_clock=wall or WallClock())
    ids = await store.open(history)
    return Life(history, ids, store)


def rows(source: Path | HistoryStore) -> list[int]:
    """The seqs in the file: through the store's own connection while it is open (it
    holds the file locked), else read directly."""
    if isinstance(source, HistoryStore):
        conn = source._connection()
        return [seq for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
    with closing(sqlite3.connect(source)) as conn:
        return [seq for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq")]


def moved_aside(directory: Path) -> list[Path]:
    return sorted(directory.glob("history.db.corrupt-*"))


# -- round trip --------------------------------------------------------------------------


async def test_a_clean_restart_keeps_epoch_numbering_and_events(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = await start(path)
    assert first.store.recovered == "new"
    seqs = first.publish("pdfm", 3) + first.publish("health", 1)
    assert await first.store.close()

    second = await start(path)
    assert second.store.recovered == "clean"
    assert second.ids.epoch == first.ids.epoch
    assert second.ids.seq == seqs[-1]  # the next id continues the numbering
    assert second.replay(seqs[0]) == (seqs[1:3], True)
    assert second.replay(0, ("pdfm", "health")) == (seqs, True)
    payloads = [f.payload for f in second.history.replay(["pdfm"], 0, 0).frames]
    assert payloads[0].startswith(b'{"id":"' + first.ids.epoch.encode())
    assert second.publish()[0] == seqs[-1] + 1


async def test_the_service_task_writes_behind_in_batches(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "history.db"
    life = await start(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(life.store.run)
        seqs = life.publish(n=5)
        assert life.store.pending == 5  # queued by the publish path, nothing written yet
        assert rows(life.store) == []
        await trio.sleep(1)  # virtual: several flush intervals
        assert life.store.pending == 0  # the service task took them all in one batch
        # Its write runs in a worker thread, which the virtual clock does not wait for:
        # a flush of our own queues behind the lock that write holds, so once it returns
        # the service task's batch is in the file. Ours writes nothing more.
        assert await life.store.flush()
        assert life.store.written == 5
        assert rows(life.store) == seqs
        nursery.cancel_scope.cancel()
    await life.store.close()


# -- honesty about what is missing -------------------------------------------------------


async def test_queue_overflow_is_counted_and_makes_resumes_across_it_incomplete(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    first = await start(path, max_pending=2)
    seqs = first.publish(n=5)
    # Nothing was written yet and the queue holds 2: the 3 oldest were dropped.
    assert first.store.dropped == 3
    assert first.store.pending == 2
    # This process still holds them all in memory: its own resumes are complete.
    assert first.replay(seqs[0]) == (seqs[1:], True)
    assert await first.store.close()

    second = await start(path)
    assert rows(second.store) == seqs[3:]
    # Across the hole: incomplete, but what was kept is replayed.
    assert second.replay(seqs[0]) == (seqs[3:], False)
    # After the hole: complete.
    assert second.replay(seqs[2]) == (seqs[3:], True)


async def test_a_failed_write_keeps_serving_and_is_recorded_as_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "history.db"
    first = await start(path)
    lost = first.publish(n=2)

    def disk_full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(first.store, "_write", disk_full)
        assert await first.store.flush() is False
    assert (first.store.lost, first.store.failures) == (2, 1)
    kept = first.publish(n=2)
    assert await first.store.flush() is True  # the disk recovered
    assert await first.store.close()

    second = await start(path)
    assert second.replay(lost[0]) == (kept, False)
    assert second.replay(lost[-1]) == (kept, True)


async def test_metrics_report_what_the_file_wrote_dropped_and_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    life = await start(tmp_path / "history.db", max_pending=2)
    hub = Hub(make_settings().hub, make_settings().limits)
    metrics = Metrics(hub, HttpCounts())
    assert "hubd_history_file" not in metrics.render().decode()  # off: nothing to report
    metrics.watch_history(life.store)

    def figures() -> dict[str, float]:
        return {
            line.split()[0]: float(line.split()[1])
            for line in metrics.render().decode().splitlines()
            if line.startswith("hubd_history_file")
        }

    life.publish(n=3)  # one more than the queue holds: the oldest is dropped
    assert figures() == {
        "hubd_history_file_pending": 2,
        "hubd_history_file_events_written_total": 0,
        "hubd_history_file_events_dropped_total": 1,
        "hubd_history_file_events_lost_total": 0,
    }
    assert await life.store.flush()
    life.publish(n=1)

    def disk_full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(life.store, "_write", disk_full)
        assert await life.store.flush() is False
    assert figures() == {
        "hubd_history_file_pending": 0,
        "hubd_history_file_events_written_total": 2,
        "hubd_history_file_events_dropped_total": 1,
        "hubd_history_file_events_lost_total": 1,
    }
    await life.store.close()


async def test_an_unclean_stop_jumps_the_numbering_and_marks_everything_before_missing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    first = await start(path)
    written = first.publish(n=3)
    assert await first.store.flush()
    unwritten = first.publish(n=2)  # the last batch, still queued when the process dies
    first.store._close_quietly()  # SIGKILL: no final write, no clean mark

    second = await start(path)
    assert second.store.recovered == "unclean"
    assert second.ids.epoch == first.ids.epoch
    assert second.ids.seq == written[-1] + UNCLEAN_JUMP
    assert second.ids.seq > unwritten[-1]  # no id a client may hold is issued again
    # Events still in the file are replayed, but no resume from before the jump is
    # complete: the unwritten events are missing (and a client may hold their ids).
    assert second.replay(written[0]) == (written[1:], False)
    assert second.replay(unwritten[-1]) == ([], False)
    fresh = second.publish(n=2)
    assert fresh[0] == written[-1] + UNCLEAN_JUMP + 1
    assert second.replay(fresh[0]) == (fresh[1:], True)
    assert await second.store.close()

    # The jump is remembered: a clean restart after it does not make old resumes complete.
    third = await start(path)
    assert third.store.recovered == "clean"
    assert third.replay(written[0]) == (written[1:] + fresh, False)
    assert third.replay(fresh[0]) == (fresh[1:], True)


async def test_an_unclean_stop_near_the_end_of_the_numbering_starts_a_new_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    first = await start(path, size=1)
    first.publish(n=3)
    assert await first.store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str(MAX_SEQ - 5),))
        conn.execute("UPDATE meta SET value = 'running' WHERE key = 'state'")
    second = await start(path)
    assert second.store.recovered == "unclean"
    assert (second.ids.epoch != first.ids.epoch, second.ids.seq) == (True, 0)
    assert second.replay(0) == ([], True)  # old ids are of another epoch: unknown
    assert rows(second.store) == []
    assert second.store._connection().execute("SELECT * FROM watermarks").fetchall() == []


async def test_a_corrupt_file_is_moved_aside_and_the_hub_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not an SQLite database, just garbage " * 100)
    life = await start(path)
    assert life.store.recovered == "corrupt"
    aside = moved_aside(tmp_path)
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not an SQLite")
    assert life.ids.seq == 0
    assert life.replay(0) == ([], True)
    seqs = life.publish(n=2)
    assert await life.store.close()
    assert rows(path) == seqs


async def test_a_file_with_foreign_meta_data_counts_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = await start(path)
    assert await first.store.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = 'zz' WHERE key = 'epoch'")
    second = await start(path)
    assert second.store.recovered == "corrupt"
    assert second.ids.epoch != "zz"


# -- bounds apply to what is loaded ------------------------------------------------------


async def test_history_size_applies_on_load_and_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = await start(path, size=100)
    seqs = first.publish(n=10)
    assert await first.store.close()

    second = await start(path, size=3)
    assert second.history.held("pdfm") == 3
    assert second.replay(seqs[0]) == (seqs[7:], False)
    assert second.replay(seqs[6]) == (seqs[7:], True)
    assert rows(second.store) == seqs[7:]


async def test_history_ttl_applies_on_load(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    wall = WallClock()
    first = await start(path, wall=wall)
    old = first.publish(n=2)
    assert await first.store.close()

    wall.now += TTL - 10  # down for a while: `old` is still within the ttl
    second = await start(path, wall=wall)
    assert second.replay(0) == (old, True)
    young = second.publish(n=1)
    assert await second.store.close()

    wall.now += 20  # `old` is now older than the ttl, `young` is not
    third = await start(path, wall=wall)
    assert third.replay(0) == (young, False)
    assert third.replay(old[-1]) == (young, True)
    assert rows(third.store) == young


async def test_history_max_bytes_applies_on_load(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = await start(path)
    seqs = first.publish(n=10)
    assert await first.store.close()
    one = len(first.history.replay(["pdfm"], 0, 0).frames[0].payload) + 300
    second = await start(path, max_bytes=4 * one + 10)  # the last ones are a digit longer
    assert second.history.held("pdfm") == 4
    assert second.replay(seqs[0]) == (seqs[6:], False)
    assert rows(second.store) == seqs[6:]


async def test_evicted_events_are_deleted_from_the_file_as_the_hub_runs(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    life = await start(path, size=2)
    seqs = life.publish(n=5)
    assert await life.store.flush()
    assert rows(life.store) == seqs[3:]
    assert await life.store.close()


# -- an unusable path --------------------------------------------------------------------


async def test_a_missing_directory_is_a_start_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "history.db"
    with pytest.raises(StoreUnusable, match="does not exist"):
        await start(path)
    config = make_settings(f'[hub]\nhistory_path = "{path}"\n')
    with pytest.raises(ConfigError, match=r"^hub\.history_path: .*does not exist"):
        check_history_path(config)
    with pytest.raises(ConfigError, match=r"^hub\.history_path: .*does not exist"):
        await open_history(config, Hub(config.hub, config.limits))


async def test_a_file_held_by_another_hub_is_a_start_error(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    first = await start(path)
    with pytest.raises(StoreUnusable, match="in use by another process"):
        history = History(1000, TTL, 1 << 26)
        await HistoryStore(str(path), busy_timeout=0.05).open(history)
    assert await first.store.close()


async def test_open_history_loads_into_the_hub(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    config = make_settings(f'[hub]\nhistory_path = "{path}"\n')
    hub = Hub(config.hub, config.limits)
    store = await open_history(config, hub)
    assert store is not None
    assert hub.history.observer is store
    assert await store.close()
    off = make_settings()
    assert await open_history(off, Hub(off.hub, off.limits)) is None


# -- configuration -----------------------------------------------------------------------


def test_history_path_is_rejected_with_the_redis_backplane() -> None:
    with pytest.raises(ConfigError, match=r"hub\.history_path is set but backplane\.kind"):
        make_settings('[hub]\nhistory_path = "/tmp/h.db"\n[backplane]\nkind = "redis"\n')


@pytest.mark.parametrize("value", ["/var/lib/hubd/", ":memory:", " /tmp/x.db", "/tmp/."])
def test_history_path_must_name_a_file(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^hub\.history_path is"):
        make_settings(f'[hub]\nhistory_path = "{value}"\n')


async def test_a_reload_keeps_the_history_path_until_a_restart() -> None:
    def config(path: str) -> str:
        return textwrap.dedent(f"""
            [hub]
            history_path = "{path}"
            history_size = 7
            [[auth.tokens]]
            name = "alice"
            token = "alice-token"
            roles = ["subscriber"]
            """)

    old = load_settings_text(config("/tmp/a.db"))
    ctx = WebContext(
        settings=old,
        hub=Hub(old.hub, old.limits),
        auth=Authenticator(old.auth),
        trusted_proxies=old.limits.trusted_networks,
    )
    report = reload.apply(ctx, load_settings_text(config("/tmp/b.db")))
    assert report.kept == [
        "hub.history_path: a change needs a restart (the history file is opened at start)"
    ]
    assert ctx.settings.hub.history_path == "/tmp/a.db"
    assert ctx.settings.hub.history_size == 7
