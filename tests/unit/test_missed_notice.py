"""Events that never reached this hub (its backplane lost them): `Hub.missed` tells every
connection that may have lost one with an `events_dropped` notice, in order with the
events; a resume still being fetched is marked incomplete instead. The Redis node's
catch-up decides who is told (driven here with a fake snapshot, in virtual time), and a
client built on hubd.client turns the notice into a `Gap`."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketRequest

from hubd.backplane.redis import GAP, RedisBackplane
from hubd.backplane.redis.wire import Snapshot as _Snapshot
from hubd.client import Credentials, Gap, HubClient, Notice
from hubd.client import connection as client_connection
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.session import Session
from hubd.metrics import HttpCounts, Metrics
from hubd.protocol.notices import CONFIRMATION
from hubd.settings import BackplaneSettings, ConfigError

from .conftest import SUBSCRIBER, Client, connect, fresh_ip, make_hub, make_settings

GAP_BODY = {"dropped": 7, "reason": "backplane_gap"}


def frame(seq: int, channel: str = "pdfm") -> Frame:
    body = {
        "id": f"{seq:064x}",
        "event_type": channel,
        "timestamp": "2026-11-28T14:35:03.600288Z",
        "message": f"E{seq}",
    }
    return Frame(json.dumps(body).encode(), trio.current_time(), channel, seq)


def messages(session: Session) -> list[str]:
    return [json.loads(f.payload)["message"] for f in session.mailbox.take(1000)]


async def received(client: Client, n: int) -> list[dict[str, Any]]:
    return [await client.receive() for _ in range(n)]


# -- Hub.missed --------------------------------------------------------------------------


async def test_the_notice_comes_between_the_events_before_the_hole_and_after_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, event_types="pdfm")
    hub.publish("pdfm", frame(1), seq=1)
    hub.publish("pdfm", frame(2), seq=2)
    assert hub.missed(["pdfm"], 7, "backplane_gap") == 1
    hub.publish("pdfm", frame(9), seq=9, immediate=True)  # not written ahead of the notice
    got = await received(client, 4)
    assert [f["message"] for f in got] == ["E1", "E2", "events_dropped", "E9"]
    notice = got[2]
    assert notice["body"] == GAP_BODY
    assert (notice["event_type"], notice["client_id"]) == ("global", client.client_id)
    assert len(notice["id"]) == 64
    assert hub.missed_notices["backplane_gap"] == 1


async def test_only_connections_of_the_channels_concerned_are_told() -> None:
    hub = make_hub()
    pdfm = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    other = hub.admit(SUBSCRIBER, fresh_ip(), "orchestrator")
    for session in (pdfm, other):
        messages(session)  # the confirmation
    assert hub.missed(["pdfm"], 3, "backplane_gap") == 1
    assert messages(pdfm) == ["events_dropped"]
    assert messages(other) == []
    # `global` is everyone's, and None means any channel.
    assert hub.missed(["global"], 0, "backplane_gap") == 2
    assert hub.missed(None, 0, "backplane_gap") == 2
    assert messages(other) == ["events_dropped", "events_dropped"]


async def test_the_notice_takes_room_beyond_the_queue_and_pushes_nothing_out() -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    hub.publish("pdfm", frame(1), seq=1)  # with the confirmation: the queue is full
    hub.missed(["pdfm"], 1, "backplane_gap")
    assert not session.mailbox.closed
    assert session.mailbox.dropped_total == 0
    assert [m for m in messages(session)][1:] == ["E1", "events_dropped"]


async def test_a_resume_being_fetched_is_marked_incomplete_instead() -> None:
    hub = make_hub()
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    messages(session)
    hub.begin_resume(session)
    assert hub.missed(["pdfm"], 5, "backplane_gap") == 1
    hub.finish_resume(session, [frame(3)], True, upto=3)
    frames = [json.loads(f.payload) for f in session.mailbox.take(100)]
    assert [f["message"] for f in frames] == ["E3", "replay_complete"]
    assert frames[1]["body"] == {"replayed": 1, "complete": False}


async def test_a_resume_waiting_for_live_events_gets_the_notice_after_its_replay() -> None:
    hub = make_hub()
    hub.last_seq = 10
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    messages(session)
    hub.begin_resume(session)
    hub.finish_resume(session, [], True, upto=20)  # replay queued; waits for seq 20 here
    hub.missed(["pdfm"], 5, "backplane_gap")
    hub.publish("pdfm", frame(21), seq=21)
    assert messages(session) == ["replay_complete", "events_dropped", "E21"]


# -- who the Redis node tells after a catch-up ---------------------------------------------


class FakeRedis:
    """Answers the lag check's GET of the cluster's seq."""

    def __init__(self, seq: int) -> None:
        self.seq = seq

    async def get(self, key: str) -> bytes:
        return str(self.seq).encode()


def node(hub: Hub) -> RedisBackplane:
    return RedisBackplane(hub, BackplaneSettings(kind="redis"))


async def catch_up(
    backplane: RedisBackplane,
    monkeypatch: pytest.MonkeyPatch,
    seq: int,
    held: list[int],
    evicted: int = 0,
) -> None:
    """Run the node's catch-up against streams holding `held` (pdfm) at cluster seq `seq`."""
    entries = [(s, "pdfm", frame(s).payload, 0) for s in held]
    snapshot = _Snapshot(seq, "0" * 8, entries, {"pdfm": evicted, "orchestrator": 0})

    async def fake_snapshot(client: object, channels: list[str], after: int) -> _Snapshot:
        return snapshot

    monkeypatch.setattr(backplane, "_snapshot", fake_snapshot)
    async with trio.open_nursery() as watching:
        await backplane._catch_up(FakeRedis(seq), watching)  # type: ignore[arg-type]
        watching.cancel_scope.cancel()


async def test_a_trimmed_stream_is_told_ahead_of_what_it_still_held(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = make_hub(history_size=3)
    backplane = node(hub)
    client = await connect(nursery, hub, event_types="pdfm")
    other = await connect(nursery, hub, event_types="orchestrator")
    hub.publish("pdfm", frame(10), seq=10)
    # Cut off at 10; meanwhile 11..20 were published on pdfm, the stream keeps 18..20.
    await catch_up(backplane, monkeypatch, 20, [18, 19, 20], evicted=17)
    got = await received(client, 5)
    assert [f["message"] for f in got] == ["E10", "events_dropped", "E18", "E19", "E20"]
    assert got[1]["body"] == {"dropped": 7, "reason": GAP}  # 11..17: at most 7 missing
    assert hub.last_seq == 20
    with trio.move_on_after(1):
        assert await other.receive() is None  # nothing for a channel that lost nothing


async def test_a_complete_catch_up_tells_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = make_hub(history_size=100)
    backplane = node(hub)
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    messages(session)
    hub.last_seq = 10
    # 11 and 13 went to a client of another node (targeted events are never kept).
    await catch_up(backplane, monkeypatch, 14, [12, 14], evicted=5)
    assert messages(session) == ["E12", "E14"]
    assert not hub.missed_notices


async def test_without_history_whatever_was_numbered_meanwhile_is_told_to_everyone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = make_hub(history_size=0)
    backplane = node(hub)
    session = hub.admit(SUBSCRIBER, fresh_ip(), "orchestrator")
    messages(session)
    hub.last_seq = 10
    await catch_up(backplane, monkeypatch, 25, [])
    frames = [json.loads(f.payload) for f in session.mailbox.take(10)]
    assert [(f["message"], f["body"]) for f in frames] == [
        ("events_dropped", {"dropped": 15, "reason": GAP})
    ]
    # Nothing was caught up, so later messages at or below 25 are not skipped.
    assert hub.last_seq == 10


async def test_after_redis_lost_its_data_everyone_is_told_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = make_hub(history_size=100)
    backplane = node(hub)
    session = hub.admit(SUBSCRIBER, fresh_ip(), "orchestrator")
    messages(session)
    backplane._epoch_seen = "0" * 8
    backplane._renumbered = True  # as _epoch leaves it on finding a new epoch
    hub.renumbered()
    await catch_up(backplane, monkeypatch, 2, [1, 2], evicted=0)
    frames = [json.loads(f.payload) for f in session.mailbox.take(10)]
    assert [(f["message"], f["body"]) for f in frames] == [
        ("events_dropped", {"dropped": 0, "reason": GAP})
    ]
    await catch_up(backplane, monkeypatch, 2, [], evicted=0)
    assert messages(session) == []


async def test_a_gap_on_one_subscription_is_counted_and_logged_not_told(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = make_hub()
    backplane = node(hub)
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    messages(session)
    caplog.set_level(logging.WARNING, "hubd.backplane")
    for seq in (5, 6, 9):
        backplane._deliver(b"pdfm\n\n%d\n1\n" % seq + frame(seq).payload)
    assert backplane.seq_gaps == 1
    assert "events 7 to 8 were numbered but never published" in caplog.text
    assert messages(session) == ["E5", "E6", "E9"]


# -- settings and metrics ----------------------------------------------------------------


def test_max_lag_defaults_and_is_validated() -> None:
    assert make_settings().backplane.max_lag == 10000
    assert make_settings("[backplane]\nmax_lag = 1\n").backplane.max_lag == 1
    with pytest.raises(ConfigError, match=r"backplane\.max_lag"):
        make_settings("[backplane]\nmax_lag = 0\n")
    with pytest.raises(ConfigError, match=r"backplane\.max_lag"):
        make_settings('[backplane]\nmax_lag = "lots"\n')


async def test_a_redis_node_exposes_its_lag_cutoffs_and_notices() -> None:
    hub = make_hub()
    backplane = node(hub)
    backplane.lag, backplane.lag_cutoffs, backplane.seq_gaps = 42, 3, 1
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    hub.missed(["pdfm"], 1, GAP)
    assert session.registered
    text = Metrics(hub, HttpCounts(), backplane).render().decode()
    assert "\nhubd_backplane_lag 42.0\n" in text
    assert "\nhubd_backplane_lag_cutoffs_total 3.0\n" in text
    assert "\nhubd_backplane_seq_gaps_total 1.0\n" in text
    assert '\nhubd_missed_notices_total{reason="backplane_gap"} 1.0\n' in text


# -- the client library ---------------------------------------------------------------------


async def test_a_client_built_on_hubd_client_sees_a_gap(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The frames a hub sends when its backplane lost events, as the client reads them."""
    hub = make_hub()
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    session.mailbox.take(1)
    hub.publish("pdfm", frame(1), seq=1)
    hub.missed(["pdfm"], 7, GAP)
    hub.publish("pdfm", frame(9), seq=9)
    sent = [f.payload.decode() for f in session.mailbox.take(10)]

    async def open_stream(*args: Any) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        nursery.start_soon(serve, server_end)
        return client_end

    async def serve(stream: trio.abc.Stream) -> None:
        try:
            request: WebSocketRequest = await trio_websocket.wrap_server_stream(nursery, stream)
            ws = await request.accept()
            body = {"client_id": session.client_id, "subscriptions": ["pdfm", "global"]}
            await ws.send_message(
                json.dumps({"event_type": "global", "message": CONFIRMATION, "body": body})
            )
            for text in sent:
                await ws.send_message(text)
            await trio.sleep_forever()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    monkeypatch.setattr(client_connection, "_open_stream", open_stream)
    notices: list[Notice] = []
    client = HubClient("http://hub.test:8080", Credentials(token="t"))
    with trio.fail_after(60):
        async with client.subscribe("pdfm", on_notice=notices.append) as events:
            stream = aiter(events)
            first = await anext(stream)
            second = await anext(stream)
    assert (first.message, second.message) == ("E1", "E9")
    gaps = [n for n in notices if isinstance(n, Gap)]
    assert gaps == [Gap("dropped_by_server", first.id, dropped=7)]
