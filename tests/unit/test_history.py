"""Event history and resume: ids that carry their publish position, bounded per-channel
history (size and age) bounded in bytes across channels, and `since=` replays in publish
order with no gap and no duplicate, on trio's virtual clock."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from hubd.core.errors import HubError
from hubd.core.frame import Frame
from hubd.core.history import ENTRY_OVERHEAD, EventIds, History, make_id, parse_id
from hubd.core.hub import Hub
from hubd.core.publishing import publish_request
from hubd.core.session import Session

from .conftest import ADMIN, SUBSCRIBER, fresh_ip, make_hub, publish_body, queued


def publish(hub: Hub, channel: str, message: str) -> str:
    result = publish_request(hub, ADMIN, publish_body({"event_type": channel, "message": message}))
    return result.ids[0]


def resume(hub: Hub, event_types: str, since: str) -> Session:
    return hub.admit(SUBSCRIBER, fresh_ip(), event_types, since=since)


async def after_confirmation(session: Session) -> list[dict[str, Any]]:
    frames = await queued(session)
    assert frames[0]["message"].startswith("WebSocket connection established")
    return frames[1:]


def messages(frames: list[dict[str, Any]]) -> list[str]:
    return [f["message"] for f in frames]


# -- ids ------------------------------------------------------------------------------------


def test_ids_are_64_hex_and_carry_epoch_and_sequence() -> None:
    ids = EventIds("0a0b0c0d")
    seq, first = ids.next()
    seq2, second = ids.next()
    assert (seq, seq2) == (1, 2)
    for event_id in (first, second):
        assert len(event_id) == 64 and int(event_id, 16) >= 0
        assert event_id.startswith("0a0b0c0d")
    assert parse_id(first, "0a0b0c0d") == 1
    assert parse_id(second, "0a0b0c0d") == 2
    assert first[24:] != second[24:]  # the random tail differs


def test_ids_of_another_epoch_or_shape_are_unknown() -> None:
    assert parse_id(make_id("11111111", 5), "22222222") is None
    assert parse_id("not-an-id", "11111111") is None
    assert parse_id(make_id("11111111", 5).upper(), "11111111") is None


def test_epoch_must_be_eight_hex_digits() -> None:
    with pytest.raises(ValueError, match="8 lowercase hex"):
        EventIds("xyz")


# -- History ---------------------------------------------------------------------------------

PLENTY = 1 << 30  # a byte bound no test here reaches


def frame(n: int) -> Frame:
    return Frame(json.dumps({"n": n}).encode(), None, "pdfm")


def test_history_keeps_the_last_size_events_per_channel() -> None:
    history = History(size=3, ttl=100.0, max_bytes=PLENTY)
    for seq in range(1, 6):
        history.append("pdfm", seq, frame(seq), now=0.0)
    assert history.held("pdfm") == 3
    replay = history.replay(["pdfm"], since=3, now=0.0)
    assert [json.loads(f.payload)["n"] for f in replay.frames] == [4, 5]
    assert replay.complete
    # Seq 2 was evicted, but nothing after it: resuming from 2 is complete, from 1 not.
    assert history.replay(["pdfm"], since=2, now=0.0).complete is True
    assert history.replay(["pdfm"], since=1, now=0.0).complete is False


def test_history_forgets_events_older_than_ttl() -> None:
    history = History(size=10, ttl=60.0, max_bytes=PLENTY)
    history.append("pdfm", 1, frame(1), now=0.0)
    history.append("pdfm", 2, frame(2), now=30.0)
    replay = history.replay(["pdfm"], since=0, now=61.0)
    assert [json.loads(f.payload)["n"] for f in replay.frames] == [2]
    assert replay.complete is False  # seq 1 expired after the resume point


def test_replay_merges_channels_in_publish_order() -> None:
    history = History(size=10, ttl=100.0, max_bytes=PLENTY)
    for seq, channel in enumerate(["pdfm", "orchestrator", "pdfm", "builds", "orchestrator"], 1):
        history.append(channel, seq, Frame(str(seq).encode(), None, channel), now=0.0)
    replay = history.replay(["orchestrator", "pdfm"], since=1, now=0.0)
    assert [f.payload for f in replay.frames] == [b"2", b"3", b"5"]
    assert replay.complete


def test_size_zero_keeps_nothing() -> None:
    history = History(size=0, ttl=100.0, max_bytes=PLENTY)
    history.append("pdfm", 1, frame(1), now=0.0)
    assert history.held("pdfm") == 0


def test_unknown_resume_point_replays_nothing_and_is_incomplete() -> None:
    history = History(size=10, ttl=100.0, max_bytes=PLENTY)
    history.append("pdfm", 1, frame(1), now=0.0)
    assert history.replay(["pdfm"], since=None, now=0.0) == history.replay([], None, 0.0)
    assert history.replay(["pdfm"], since=None, now=0.0).complete is False


# -- resume through the hub -------------------------------------------------------------------


async def test_resume_replays_what_was_missed_then_says_complete() -> None:
    hub = make_hub()
    first = publish(hub, "pdfm", "A")
    publish(hub, "orchestrator", "B")
    publish(hub, "pdfm", "C")
    publish(hub, "global", "D")
    session = resume(hub, "pdfm", first)
    frames = await after_confirmation(session)
    assert messages(frames) == ["C", "D", "replay_complete"]
    done = frames[-1]
    assert done["event_type"] == "global"
    assert done["body"] == {"replayed": 2, "complete": True}
    assert done["client_id"] == session.client_id
    # Live events follow, with nothing in between.
    publish(hub, "pdfm", "E")
    assert messages(await queued(session)) == ["E"]


async def test_replayed_frames_are_the_original_events() -> None:
    hub = make_hub()
    first = publish(hub, "pdfm", "A")
    second = publish(hub, "pdfm", "B")
    session = resume(hub, "pdfm", first)
    replayed = (await after_confirmation(session))[0]
    assert replayed["id"] == second
    assert replayed["message"] == "B"


async def test_resume_from_the_latest_event_replays_nothing_and_is_complete() -> None:
    hub = make_hub()
    last = publish(hub, "pdfm", "A")
    frames = await after_confirmation(resume(hub, "pdfm", last))
    assert frames[-1]["body"] == {"replayed": 0, "complete": True}


async def test_unknown_id_is_incomplete_with_nothing_replayed() -> None:
    hub = make_hub()
    publish(hub, "pdfm", "A")
    stranger = make_id("ffffffff" if hub.ids.epoch != "ffffffff" else "eeeeeeee", 1)
    frames = await after_confirmation(resume(hub, "pdfm", stranger))
    assert messages(frames) == ["replay_complete"]
    assert frames[0]["body"] == {"replayed": 0, "complete": False}


async def test_resume_older_than_history_is_incomplete(autojump_clock: MockClock) -> None:
    hub = make_hub(history_size=2)
    first = publish(hub, "pdfm", "A")
    for message in "BCD":
        publish(hub, "pdfm", message)
    frames = await after_confirmation(resume(hub, "pdfm", first))
    assert messages(frames) == ["C", "D", "replay_complete"]
    assert frames[-1]["body"] == {"replayed": 2, "complete": False}


async def test_expired_events_are_not_replayed(autojump_clock: MockClock) -> None:
    hub = make_hub(history_ttl=60.0)
    first = publish(hub, "pdfm", "A")
    publish(hub, "pdfm", "B")
    await trio.sleep(61)
    publish(hub, "pdfm", "C")
    frames = await after_confirmation(resume(hub, "pdfm", first))
    assert messages(frames) == ["C", "replay_complete"]
    assert frames[-1]["body"] == {"replayed": 1, "complete": False}


async def test_targeted_events_are_not_kept_for_others() -> None:
    hub = make_hub()
    first = publish(hub, "pdfm", "A")
    target = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    publish_request(
        hub,
        ADMIN,
        publish_body({"event_type": "pdfm", "message": "private", "client_id": target.client_id}),
    )
    frames = await after_confirmation(resume(hub, "pdfm", first))
    assert messages(frames) == ["replay_complete"]


async def test_malformed_since_is_a_400_naming_the_value() -> None:
    hub = make_hub()
    with pytest.raises(HubError) as caught:
        resume(hub, "pdfm", "last-one")
    assert caught.value.status == 400
    assert "'last-one'" in caught.value.message
    assert not hub.sessions


async def test_replay_is_not_counted_as_fresh_delivery_latency(
    autojump_clock: MockClock,
) -> None:
    hub = make_hub()
    first = publish(hub, "pdfm", "A")
    publish(hub, "pdfm", "B")
    await trio.sleep(30)
    session = resume(hub, "pdfm", first)
    frames = session.mailbox.take(10)
    assert all(f.accepted_at is None for f in frames)


async def test_replay_may_exceed_the_queue_bound() -> None:
    hub = make_hub(queue_size=2)
    first = publish(hub, "pdfm", "A")
    for n in range(5):
        publish(hub, "pdfm", f"E{n}")
    frames = await after_confirmation(resume(hub, "pdfm", first))
    assert messages(frames) == ["E0", "E1", "E2", "E3", "E4", "replay_complete"]
    assert frames[-1]["body"]["complete"] is True


async def test_live_events_after_a_big_replay_get_the_whole_queue() -> None:
    hub = make_hub(queue_size=3)  # the confirmation and two live events
    first = publish(hub, "pdfm", "A")
    for n in range(5):
        publish(hub, "pdfm", f"E{n}")
    session = resume(hub, "pdfm", first)
    publish(hub, "pdfm", "L1")
    publish(hub, "pdfm", "L2")
    assert session.mailbox.dropped_total == 0
    publish(hub, "pdfm", "L3")  # one more overflows the queue of 3
    assert session.mailbox.dropped_total == 1


def test_with_no_history_kept_a_resume_is_never_complete() -> None:
    history = History(size=0, ttl=100.0, max_bytes=PLENTY)
    history.append("pdfm", 1, frame(1), now=0.0)
    assert history.replay(["pdfm"], since=1, now=0.0).complete is False


# -- the byte bound --------------------------------------------------------------------------

# Each test event counts for exactly this much against max_bytes.
EVENT = 100
COST = EVENT + ENTRY_OVERHEAD


def sized(channel: str = "pdfm") -> Frame:
    return Frame(b"x" * EVENT, None, channel)


def held_seqs(history: History, channels: list[str], since: int = 0) -> list[int]:
    return [f.seq for f in history.replay(channels, since, now=0.0).frames]


def fill(history: History, channels: list[str], now: float = 0.0) -> None:
    """Append one event per entry of `channels`, seq 1, 2, ... in that order."""
    for seq, channel in enumerate(channels, 1):
        frame = sized(channel)
        frame.seq = seq
        history.append(channel, seq, frame, now=now)


def test_byte_bound_evicts_the_globally_oldest_event_whatever_its_channel() -> None:
    history = History(size=100, ttl=100.0, max_bytes=3 * COST)
    fill(history, ["pdfm", "orchestrator", "builds", "pdfm", "builds"])
    assert history.bytes == 3 * COST
    # seq 1 (pdfm) and 2 (orchestrator) went first, though pdfm has more events.
    assert held_seqs(history, ["pdfm", "orchestrator", "builds"]) == [3, 4, 5]
    assert history.held("orchestrator") == 0
    assert (history.evicted_for_bytes, history.evicted_bytes) == (2, 2 * COST)


def test_a_resume_across_an_event_evicted_for_bytes_is_incomplete() -> None:
    history = History(size=100, ttl=100.0, max_bytes=2 * COST)
    fill(history, ["pdfm", "orchestrator", "pdfm", "pdfm"])
    # pdfm lost seq 1 only: from 1 on it is complete, from before it not.
    assert history.replay(["pdfm"], since=1, now=0.0).complete is True
    assert history.replay(["pdfm"], since=0, now=0.0).complete is False
    # orchestrator lost its only event, seq 2.
    assert history.replay(["orchestrator"], since=1, now=0.0).complete is False
    assert history.replay(["orchestrator"], since=2, now=0.0).complete is True


def test_an_event_larger_than_the_bound_is_not_kept() -> None:
    history = History(size=100, ttl=100.0, max_bytes=COST - 1)
    fill(history, ["pdfm"])
    assert history.held("pdfm") == 0
    assert history.bytes == 0
    assert history.replay(["pdfm"], since=0, now=0.0).complete is False


def test_max_bytes_zero_keeps_nothing_and_no_resume_is_complete() -> None:
    history = History(size=100, ttl=100.0, max_bytes=0)
    fill(history, ["pdfm"])
    assert history.held("pdfm") == 0
    assert history.replay(["pdfm"], since=1, now=0.0).complete is False


def test_events_published_while_nothing_was_kept_make_older_resumes_incomplete() -> None:
    history = History(size=100, ttl=100.0, max_bytes=0)
    fill(history, ["pdfm", "pdfm"])  # seq 1, 2: not kept
    history.resize(100, 100.0, PLENTY, now=0.0)  # a reload turns history on
    frame = sized()
    history.append("pdfm", 3, frame, now=0.0)
    assert history.replay(["pdfm"], since=1, now=0.0).complete is False
    replay = history.replay(["pdfm"], since=2, now=0.0)
    assert replay.complete is True
    assert replay.frames == [frame]


def test_resize_applies_lowered_bounds_at_once() -> None:
    history = History(size=100, ttl=100.0, max_bytes=PLENTY)
    fill(history, ["pdfm", "orchestrator", "pdfm", "orchestrator", "pdfm"])
    history.resize(100, 100.0, 2 * COST, now=0.0)
    assert history.bytes == 2 * COST
    assert held_seqs(history, ["pdfm", "orchestrator"]) == [4, 5]
    history.resize(1, 100.0, PLENTY, now=0.0)
    assert held_seqs(history, ["pdfm", "orchestrator"]) == [4, 5]
    history.resize(100, 10.0, PLENTY, now=50.0)  # a shorter ttl: all of them expired
    assert history.bytes == 0
    assert history.replay(["pdfm", "orchestrator"], since=4, now=50.0).complete is False


def test_expired_events_of_an_idle_channel_are_freed_by_any_publish() -> None:
    history = History(size=100, ttl=60.0, max_bytes=PLENTY)
    fill(history, ["orchestrator", "orchestrator"], now=0.0)
    frame = sized()
    history.append("pdfm", 3, frame, now=61.0)
    assert history.bytes == COST  # orchestrator is never touched, its memory is freed


def test_records_of_events_evicted_per_channel_do_not_pile_up() -> None:
    # One long-lived event at the front, then many on a channel trimmed by its size.
    history = History(size=3, ttl=1e9, max_bytes=PLENTY)
    fill(history, ["orchestrator"])
    for seq in range(2, 100_000):
        history.append("pdfm", seq, sized(), now=0.0)
    assert history.held("pdfm") == 3
    assert len(history._order) <= 2 * 4 + 64


async def test_hub_resume_across_an_event_evicted_for_bytes_is_incomplete() -> None:
    hub = make_hub(history_max_bytes=3000)
    first = publish(hub, "pdfm", "A")
    publish(hub, "orchestrator", "x" * 2500)  # pushes A out: the bound is global
    frames = await after_confirmation(resume(hub, "pdfm", first))
    assert frames[-1]["body"] == {"replayed": 0, "complete": True}  # nothing after A lost
    second = publish(hub, "pdfm", "B")  # B and C push the big event out
    publish(hub, "pdfm", "C")
    publish(hub, "orchestrator", "y" * 2500)  # and this one pushes out B and C
    frames = await after_confirmation(resume(hub, "pdfm", second))
    assert frames[-1]["body"] == {"replayed": 0, "complete": False}


async def test_reload_lowering_history_max_bytes_frees_history_at_once() -> None:
    hub = make_hub()
    for n in range(10):
        publish(hub, "pdfm", f"E{n}")
    assert hub.history.held("pdfm") == 10
    lowered = msgspec.structs.replace(hub.settings, history_max_bytes=0)
    assert hub.reconfigure(lowered, hub.limits) == []
    assert hub.history.held("pdfm") == 0
    assert hub.history.bytes == 0
