"""Resuming through a backplane: while the replay is fetched, live events for the session
are held; `finish_resume` merges both at the snapshot's boundary without a gap or a
duplicate; the hold is bounded; a renumbered backplane lets waiting sessions go."""

from __future__ import annotations

import json
from typing import Any

from hubd.backplane.redis import RedisBackplane
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.session import Session
from hubd.settings import BackplaneSettings

from .conftest import SUBSCRIBER, fresh_ip, make_hub


def frame(seq: int, channel: str = "pdfm", message: str | None = None) -> Frame:
    body = {"id": f"e{seq}", "event_type": channel, "message": message or f"E{seq}"}
    return Frame(json.dumps(body).encode(), None, channel, seq)


def resuming(hub: Hub, channels: str = "pdfm") -> Session:
    session = hub.admit(SUBSCRIBER, fresh_ip(), channels)
    session.mailbox.take(1)  # the confirmation
    hub.begin_resume(session)
    return session


def messages(session: Session) -> list[str]:
    taken = session.mailbox.take(1000)
    return [json.loads(f.payload)["message"] for f in taken]


def body_of_last(frames: list[dict[str, Any]]) -> Any:
    return frames[-1]["body"]


async def test_held_events_the_snapshot_covered_are_not_sent_twice() -> None:
    hub = make_hub()
    session = resuming(hub)
    # Published while the replay was being read: 5 and 6 made it into the snapshot
    # (boundary 6), 7 came after it.
    for seq in (5, 6, 7):
        hub.publish("pdfm", frame(seq), seq=seq)
    assert messages(session) == []  # held, not delivered yet
    hub.finish_resume(session, [frame(4), frame(5), frame(6)], True, upto=6)
    assert messages(session) == ["E4", "E5", "E6", "replay_complete", "E7"]
    hub.publish("pdfm", frame(8), seq=8)
    assert messages(session) == ["E8"]


async def test_a_lagging_node_does_not_resend_what_precedes_the_resume_point() -> None:
    hub = make_hub()
    session = resuming(hub)
    # The client resumes from 100, the snapshot is at 101, but this node has only
    # delivered up to 98 so far: 99 and 100 still reach it, then 101 and 102.
    hub.publish("pdfm", frame(99), seq=99)
    hub.finish_resume(session, [frame(101)], True, upto=101)
    assert messages(session) == ["E101", "replay_complete"]
    for seq in (100, 101, 102):
        hub.publish("pdfm", frame(seq), seq=seq)
    assert messages(session) == ["E102"]


async def test_the_hold_is_bounded_and_an_overflow_makes_the_resume_incomplete() -> None:
    hub = make_hub(queue_size=3)
    session = resuming(hub)
    for seq in range(1, 6):
        hub.publish("pdfm", frame(seq), seq=seq)
    assert session.mailbox.dropped_total == 2
    hub.finish_resume(session, [], True, upto=0)
    frames = [json.loads(f.payload) for f in session.mailbox.take(100)]
    assert [f["message"] for f in frames] == ["replay_complete", "E3", "E4", "E5"]
    assert frames[0]["body"] == {"replayed": 0, "complete": False}


async def test_a_targeted_event_waits_behind_the_replay() -> None:
    hub = make_hub()
    session = resuming(hub)
    hub.publish("pdfm", frame(7, message="private"), session, seq=7)
    assert messages(session) == []
    hub.finish_resume(session, [frame(6)], True, upto=6)
    assert messages(session) == ["E6", "replay_complete", "private"]


async def test_a_renumbered_backplane_releases_sessions_waiting_for_an_old_seq() -> None:
    hub = make_hub()
    hub.last_seq = 10
    session = resuming(hub)
    hub.finish_resume(session, [], True, upto=50)  # waits until this node reaches 50
    hub.publish("pdfm", frame(11), seq=11)
    assert messages(session) == ["replay_complete"]  # 11 <= 50: skipped as replayed
    hub.renumbered()
    hub.publish("pdfm", frame(1), seq=1)
    assert messages(session) == ["E1"]


async def test_a_late_targeted_message_does_not_move_the_numbering_back() -> None:
    hub = make_hub()
    node = RedisBackplane(hub, BackplaneSettings(kind="redis"))
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    session.mailbox.take(1)
    node._deliver(b"pdfm\n\n203\n1\n" + frame(203).payload)
    node._deliver(b"pdfm\nsomeone-elsewhere\n202\n1\n" + frame(202).payload)
    assert hub.last_seq == 203
    node._deliver(b"pdfm\n\n203\n1\n" + frame(203).payload)  # the same event again
    assert messages(session) == ["E203"]
