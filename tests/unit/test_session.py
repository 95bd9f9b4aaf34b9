"""One subscriber connection served by `serve_session` over `MemoryTransport`, on trio's
virtual clock (`autojump_clock`): frames, replies, limits, heartbeat, slow consumers and
every way a connection ends."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from trio.testing import MockClock

from hubd.core.close_codes import CLOSE_GRACE
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.transport import Closed, MemoryTransport
from hubd.protocol.envelope import Envelope, encode_bytes
from hubd.protocol.notices import CONFIRMATION

from .conftest import SUBSCRIBER, Client, StalledTransport, admit, connect, make_hub, serve

HEX64 = re.compile(r"^[0-9a-f]{64}$")
PING = {"event_type": "health", "message": "ping"}
IP = "192.0.2.10"


def event(channel: str, message: str = "EVT") -> Frame:
    return Frame(
        encode_bytes(Envelope(id="e" * 64, event_type=channel, timestamp="t", message=message))
    )


def assert_slot_free(hub: Hub, client: Client) -> None:
    """The session is gone and its IP may connect again at once."""
    assert client.session.client_id not in hub.sessions
    again = admit(hub, SUBSCRIBER, None, client.session.ip)
    hub.unregister(again)


# -- confirmation, ping, client-id ---------------------------------------------------------


async def test_confirmation_is_the_first_frame(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm,health", read_confirmation=False)
    hub.publish("pdfm", event("pdfm"))
    first = await client.receive()
    assert first["message"] == CONFIRMATION
    assert first["event_type"] == "global"
    assert first["body"] == {
        "client_id": client.client_id,
        "subscriptions": ["pdfm", "health", "global"],
    }
    assert (await client.receive())["message"] == "EVT"


async def test_ping_gets_pong_with_ref_id(nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "health")
    await client.send({**PING, "id": "abc"})
    pong = await client.receive()
    assert list(pong) == ["id", "ref_id", "event_type", "timestamp", "message", "client_id"]
    assert HEX64.match(pong["id"])
    assert pong["ref_id"] == "abc"
    assert (pong["event_type"], pong["message"]) == ("health", "pong")
    assert pong["client_id"] == client.client_id


async def test_ping_without_id_gets_a_fresh_ref_id(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "health")
    await client.send(PING)
    await client.send(PING)
    first, second = await client.receive(), await client.receive()
    for pong in (first, second):
        assert pong["message"] == "pong"
        assert HEX64.match(pong["ref_id"])
        assert pong["ref_id"] != pong["id"]
    assert first["ref_id"] != second["ref_id"]


async def test_ping_without_health_gets_a_global_error(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "pdfm")
    await client.send({**PING, "id": "p1"})
    reply = await client.receive()
    assert reply["event_type"] == "global"
    assert reply["message"] == "error"
    assert reply["ref_id"] == "p1"
    assert reply["client_id"] == client.client_id
    assert "event_types=health" in reply["body"]["error"]


async def test_client_id_with_system(nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "system")
    await client.send({"event_type": "system", "message": "client-id", "id": "who"})
    reply = await client.receive()
    assert reply["event_type"] == "system"
    assert reply["message"] == "client-id"
    assert reply["ref_id"] == "who"
    assert reply["client_id"] == client.client_id
    assert reply["body"] == {"client-id": client.client_id}
    assert set(reply) == {"id", "ref_id", "event_type", "timestamp", "message", "body", "client_id"}


async def test_client_id_without_system_gets_a_global_error(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "health")
    await client.send({"event_type": "system", "message": "client-id"})
    reply = await client.receive()
    assert (reply["event_type"], reply["message"]) == ("global", "error")
    assert HEX64.match(reply["ref_id"])
    assert "event_types=system" in reply["body"]["error"]


# -- bad frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"ping"', "JSON object"),
        ('{"event_type": "health"}', "'message'"),
        ('{"event_type": "pdfm", "message": "VM_STATE_CHANGED"}', "unknown event_type 'pdfm'"),
        ('{"event_type": "health", "message": "pong"}', "unknown health message 'pong'"),
        ('{"event_type": "system", "message": "whoami"}', "unknown system message 'whoami'"),
        (b'{"event_type": "health", "message": "ping"}', "binary frames are not accepted"),
        (b"\x00\x01", "binary frames are not accepted"),
    ],
)
async def test_bad_frame_gets_an_error_event_and_the_connection_stays_open(
    nursery: trio.Nursery, autojump_clock: MockClock, frame: str | bytes, fragment: str
) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "health,system")
    await client.send(frame)
    reply = await client.receive()
    assert (reply["event_type"], reply["message"]) == ("global", "error")
    assert list(reply["body"]) == ["error"]
    assert fragment in reply["body"]["error"]
    assert reply["client_id"] == client.client_id
    await client.send({**PING, "id": "still-here"})
    assert (await client.receive())["ref_id"] == "still-here"
    assert client.transport.closed is None


async def test_error_reply_echoes_the_frame_id(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER)
    await client.send({"event_type": "bogus", "message": "x", "id": "q-7"})
    assert (await client.receive())["ref_id"] == "q-7"


# -- frame size limit ----------------------------------------------------------------------

LIMIT = 256


def ping_of_size(size: int, filler: str = "x") -> str:
    """A valid ping frame whose UTF-8 encoding is exactly `size` bytes."""
    base = json.dumps({**PING, "id": ""}, ensure_ascii=False)
    room = size - len(base.encode())
    width = len(filler.encode())
    padding = filler * (room // width) + "x" * (room % width)
    frame = json.dumps({**PING, "id": padding}, ensure_ascii=False)
    assert len(frame.encode()) == size
    return frame


@pytest.mark.parametrize("filler", ["x", "é", "€", "😀"])
async def test_frame_of_exactly_max_message_bytes_is_accepted(
    nursery: trio.Nursery, autojump_clock: MockClock, filler: str
) -> None:
    client = await connect(nursery, make_hub(max_message_bytes=LIMIT), SUBSCRIBER, "health")
    await client.send(ping_of_size(LIMIT, filler))
    assert (await client.receive())["message"] == "pong"


@pytest.mark.parametrize("filler", ["x", "é", "€", "😀"])
async def test_frame_one_byte_over_closes_with_1009(
    nursery: trio.Nursery, autojump_clock: MockClock, filler: str
) -> None:
    hub = make_hub(max_message_bytes=LIMIT)
    client = await connect(nursery, hub, SUBSCRIBER, "health", IP)
    frame = ping_of_size(LIMIT + 1, filler)
    assert len(frame) <= LIMIT or filler == "x"  # multi-byte: only the byte count is over
    await client.send(frame)
    closed = await client.expect_close()
    assert closed.code == 1009
    assert_slot_free(hub, client)


async def test_binary_frame_over_the_limit_closes_with_1009(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    client = await connect(nursery, make_hub(max_message_bytes=LIMIT), SUBSCRIBER)
    await client.send(b"x" * LIMIT)
    assert "binary" in (await client.receive())["body"]["error"]
    await client.send(b"x" * (LIMIT + 1))
    assert (await client.expect_close()).code == 1009


# -- heartbeat -----------------------------------------------------------------------------

IDLE = 10.0


async def test_idle_connection_is_closed_with_4408_at_the_deadline(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    start = trio.current_time()
    client = await connect(nursery, hub, SUBSCRIBER, "health", IP)
    closed = await client.expect_close()
    assert (closed.code, closed.reason) == (4408, "idle timeout")
    assert trio.current_time() - start == pytest.approx(IDLE, abs=1e-6)
    assert_slot_free(hub, client)


async def test_the_first_heartbeat_period_starts_when_serving_starts(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Time between admission and serving (with a Redis backplane: the IP claim and the
    replay, up to seconds) does not count against the client's first idle period."""
    hub = make_hub(idle_timeout=IDLE)
    session = admit(hub, SUBSCRIBER, "health", IP)
    await trio.sleep(IDLE * 0.8)
    served = trio.current_time()
    client = await serve(nursery, hub, session)
    await client.receive()  # the confirmation
    closed = await client.expect_close()
    assert closed.code == 4408
    assert trio.current_time() - served == pytest.approx(IDLE, abs=1e-6)


async def test_events_from_the_server_do_not_count_as_heartbeats(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    start = trio.current_time()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    for _ in range(3):
        await trio.sleep(IDLE / 4)
        hub.publish("pdfm", event("pdfm"))
        await client.receive()
    assert (await client.expect_close()).code == 4408
    assert trio.current_time() - start == pytest.approx(IDLE, abs=1e-6)


async def test_a_client_pinging_every_half_timeout_outlives_many_deadlines(
    nursery: trio.Nursery,
    autojump_clock: MockClock,
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    client = await connect(nursery, hub, SUBSCRIBER, "health")
    start = trio.current_time()
    for i in range(10):
        await trio.sleep(IDLE / 2)
        await client.send({**PING, "id": str(i)})
        assert (await client.receive())["ref_id"] == str(i)
    last_ping = trio.current_time()
    assert last_ping - start == pytest.approx(5 * IDLE)
    closed = await client.expect_close()
    assert closed.code == 4408
    assert trio.current_time() - last_ping == pytest.approx(IDLE, abs=1e-6)


async def test_idle_close_flushes_what_was_queued_first(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", transport=StalledTransport())
    assert isinstance(client.transport, StalledTransport)
    client.transport.stall()
    hub.publish("pdfm", event("pdfm", "E0"))
    hub.publish("pdfm", event("pdfm", "E1"))
    await trio.sleep(IDLE + 1)
    assert client.session.close_code == 4408
    client.transport.resume()
    assert [(await client.receive())["message"] for _ in range(2)] == ["E0", "E1"]
    assert (await client.expect_close()).code == 4408


async def test_idle_close_of_a_peer_that_stopped_reading_ends_the_session(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP, transport=StalledTransport())
    assert isinstance(client.transport, StalledTransport)
    client.transport.stall()
    hub.publish("pdfm", event("pdfm", "STUCK"))
    await trio.sleep(IDLE + 2 * CLOSE_GRACE)
    assert client.session.close_code == 4408
    assert client.done.is_set(), "the session outlived its idle deadline"
    assert_slot_free(hub, client)


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps(PING),  # not subscribed to health: an error reply, still a heartbeat
        "not json",
        b"binary",
        json.dumps({"event_type": "system", "message": "client-id"}),
    ],
)
async def test_every_client_frame_moves_the_idle_deadline(
    nursery: trio.Nursery, autojump_clock: MockClock, frame: str | bytes
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    start = trio.current_time()
    await trio.sleep(0.6 * IDLE)
    await client.send(frame)
    assert (await client.receive())["message"] == "error"
    closed = await client.expect_close()
    assert closed.code == 4408
    assert trio.current_time() - start == pytest.approx(1.6 * IDLE, abs=1e-6)


@pytest.mark.parametrize(("reloaded", "closed_after"), [(4.0, 3 + 4.0), (20.0, 3 + 20.0)])
async def test_a_reload_of_idle_timeout_applies_from_the_next_frame(
    nursery: trio.Nursery, autojump_clock: MockClock, reloaded: float, closed_after: float
) -> None:
    """Shorter: the frame brings the connection's deadline forward at once. Longer: the
    old deadline passes while the client has been seen since, and the connection lives on
    until the new one."""
    hub = make_hub(idle_timeout=IDLE)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    start = trio.current_time()
    settings = msgspec.structs.replace(hub.settings, idle_timeout=reloaded)
    assert hub.reconfigure(settings, hub.limits) == []
    await trio.sleep(3)
    await client.send("not json")  # a heartbeat like any other frame
    assert (await client.receive())["message"] == "error"
    closed = await client.expect_close()
    assert closed.code == 4408
    assert trio.current_time() - start == pytest.approx(closed_after, abs=1e-6)


# -- delivery ------------------------------------------------------------------------------


async def test_events_are_written_at_once_without_periodic_flush(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    start = trio.current_time()
    hub.publish("pdfm", event("pdfm", "NOW"))
    assert (await client.receive())["message"] == "NOW"
    assert trio.current_time() == start


async def test_events_arrive_in_publish_order(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    for i in range(300):
        hub.publish("pdfm", event("pdfm", f"E{i}"))
        if i % 7 == 0:
            await trio.lowlevel.checkpoint()
    assert [(await client.receive())["message"] for _ in range(300)] == [
        f"E{i}" for i in range(300)
    ]


async def test_only_subscribed_channels_are_delivered(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER)
    hub.publish("pdfm", event("pdfm", "NOT_YOURS"))
    hub.publish("global", event("global", "YOURS"))
    assert (await client.receive())["message"] == "YOURS"


async def test_drop_oldest_reports_events_dropped_once_caught_up(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=4)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    for i in range(10):  # no checkpoint in between: the writer cannot run
        hub.publish("pdfm", event("pdfm", f"E{i}"))
    assert [(await client.receive())["message"] for _ in range(4)] == ["E6", "E7", "E8", "E9"]
    notice = await client.receive()
    assert (notice["event_type"], notice["message"]) == ("global", "events_dropped")
    assert notice["body"] == {"dropped": 6}
    assert notice["client_id"] == client.client_id
    assert HEX64.match(notice["id"])
    # Caught up: later events flow normally and the drops are not reported twice.
    hub.publish("pdfm", event("pdfm", "AFTER"))
    assert (await client.receive())["message"] == "AFTER"
    hub.publish("pdfm", event("pdfm", "AGAIN"))
    assert (await client.receive())["message"] == "AGAIN"
    assert client.session.mailbox.dropped_total == 6
    assert client.transport.closed is None


class SlowTransport(MemoryTransport):
    """A client that takes 0.1 s (virtual) to take each frame: slower than its channel."""

    async def send(self, text: str) -> None:
        await trio.sleep(0.1)
        await super().send(text)


async def test_a_subscriber_that_never_catches_up_is_still_told_what_it_misses(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=4)
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", transport=SlowTransport())
    published = 0

    async def publisher() -> None:
        nonlocal published
        for i in range(200):  # 20 events/s for 10 s: twice what the client takes
            hub.publish("pdfm", event("pdfm", f"E{i}"))
            published += 1
            await trio.sleep(0.05)

    nursery.start_soon(publisher)
    received = dropped = 0
    notices_while_publishing = 0
    while received + dropped < 200:
        frame = await client.receive()
        if frame["message"] == "events_dropped":
            dropped += frame["body"]["dropped"]
            if published < 200:
                notices_while_publishing += 1
        else:
            received += 1
    # The queue never emptied while events kept coming, yet the client heard of its
    # losses about once a second, not only at the end; and every event is accounted for.
    assert notices_while_publishing >= 5
    assert received + dropped == 200
    assert dropped == client.session.mailbox.dropped_total


async def test_drops_before_the_writer_first_runs_are_reported(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2)
    session = admit(hub, SUBSCRIBER, "pdfm")
    for i in range(5):  # the confirmation and E0-E2 are pushed out
        hub.publish("pdfm", event("pdfm", f"E{i}"))
    client = await serve(nursery, hub, session)
    assert [(await client.receive())["message"] for _ in range(2)] == ["E3", "E4"]
    notice = await client.receive()
    assert (notice["message"], notice["body"]) == ("events_dropped", {"dropped": 4})


async def test_disconnect_policy_closes_a_slow_consumer_with_1013(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP)
    for i in range(3):  # no checkpoint in between: the writer cannot run
        hub.publish("pdfm", event("pdfm", f"E{i}"))
    closed = await client.expect_close()
    assert closed.code == 1013
    assert client.session.mailbox.dropped_total == 3
    assert_slot_free(hub, client)


async def test_disconnect_policy_spares_the_subscribers_that_keep_up(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    slow = await connect(nursery, hub, SUBSCRIBER, "pdfm", transport=StalledTransport())
    fast = await connect(nursery, hub, SUBSCRIBER, "pdfm")
    slow_socket = slow.transport
    assert isinstance(slow_socket, StalledTransport)
    slow_socket.stall()
    for i in range(4):
        hub.publish("pdfm", event("pdfm", f"E{i}"))
        await trio.sleep(0.01)  # let both writers take what they can
        assert (await fast.receive())["message"] == f"E{i}"
    # slow: E0 is stuck in its socket, E1 and E2 filled its queue, E3 overflowed it.
    assert slow.session.close_code == 1013
    assert fast.session.close_code is None
    slow_socket.resume()
    assert (await slow.receive())["message"] == "E0"
    assert (await slow.expect_close()).code == 1013
    assert slow.client_id not in hub.sessions
    hub.publish("pdfm", event("pdfm", "LATER"))
    assert (await fast.receive())["message"] == "LATER"


async def test_disconnect_policy_closes_a_stalled_consumer_that_keeps_pinging(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect", idle_timeout=IDLE)
    slow = await connect(nursery, hub, SUBSCRIBER, "health,pdfm", IP, transport=StalledTransport())
    assert isinstance(slow.transport, StalledTransport)
    slow.transport.stall()
    for i in range(4):
        hub.publish("pdfm", event("pdfm", f"E{i}"))
        await trio.sleep(0.01)  # let the writer take what it can
    assert slow.session.close_code == 1013
    for _ in range(6):  # the client keeps sending heartbeats but never reads
        await trio.sleep(IDLE / 2)
        await slow.send(PING)
    assert slow.done.is_set(), "the slow consumer is still connected"
    assert slow.transport.closed is not None
    assert slow.transport.closed.code == 1013
    assert_slot_free(hub, slow)


async def test_replies_overflowing_a_disconnect_queue_close_with_1013(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    client = await connect(nursery, hub, SUBSCRIBER, "health", transport=StalledTransport())
    assert isinstance(client.transport, StalledTransport)
    client.transport.stall()
    for i in range(4):  # pong 0 is stuck in the socket, 1 and 2 fill the queue, 3 overflows
        await client.send({**PING, "id": str(i)})
        await trio.sleep(0.01)
    client.transport.resume()
    await client.ended()
    assert client.transport.closed is not None, "the session ended without a close frame"
    assert client.transport.closed.code == 1013


async def test_close_all_flushes_queued_frames_then_closes_with_1001(
    nursery: trio.Nursery,
    autojump_clock: MockClock,
) -> None:
    hub = make_hub()
    clients = [await connect(nursery, hub, SUBSCRIBER, "pdfm", f"192.0.2.{i}") for i in range(1, 4)]
    for i in range(5):
        hub.publish("pdfm", event("pdfm", f"E{i}"))
    hub.close_all(1001, "server shutting down")
    for client in clients:
        assert [(await client.receive())["message"] for _ in range(5)] == [
            f"E{i}" for i in range(5)
        ]
        closed = await client.expect_close()
        assert closed == Closed(1001, "server shutting down")
    with trio.fail_after(1):
        await hub.wait_empty()
    assert hub.sessions == {}


# -- however it ends, the session is unregistered ------------------------------------------


async def test_client_hang_up_unregisters_without_a_close_frame(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP)
    await client.hang_up()
    await client.ended()
    assert client.transport.closed is None
    assert_slot_free(hub, client)


async def test_a_client_that_hangs_up_while_its_writer_is_stuck_is_ended_at_once(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """The reader sees the client gone while the writer waits on a socket nobody drains:
    the whole connection is cancelled then, not left holding its slot until the kernel
    gives up on the socket."""
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP, transport=StalledTransport())
    assert isinstance(client.transport, StalledTransport)
    client.transport.stall()
    hub.publish("pdfm", event("pdfm", "STUCK"))
    await trio.testing.wait_all_tasks_blocked()
    gone = trio.current_time()
    await client.hang_up()
    await client.ended()
    assert trio.current_time() == gone
    assert_slot_free(hub, client)


async def test_client_gone_while_the_server_writes_unregisters(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP)
    await client.transport.to_client.aclose()
    hub.publish("pdfm", event("pdfm"))
    await client.ended()
    assert_slot_free(hub, client)


async def test_cancelled_session_unregisters(autojump_clock: MockClock) -> None:
    hub = make_hub()
    async with trio.open_nursery() as inner:
        client = await connect(inner, hub, SUBSCRIBER, "pdfm", IP)
        assert client.client_id in hub.sessions
        inner.cancel_scope.cancel()
    assert client.done.is_set()
    assert_slot_free(hub, client)


async def test_reconnect_right_after_close_succeeds(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    first = await connect(nursery, hub, SUBSCRIBER, "health", IP)
    await first.hang_up()
    await first.ended()
    second = await connect(nursery, hub, SUBSCRIBER, "health", IP)
    await second.send({**PING, "id": "again"})
    assert (await second.receive())["ref_id"] == "again"


# -- the writer task runs only while there is something to write ----------------------------


def _writer_tasks() -> int:
    """How many connection writer tasks exist in this trio run."""
    count = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        if task.name.endswith("_hooks.<locals>.writer"):
            count += 1
        for child in task.child_nurseries:
            todo.extend(child.child_tasks)
    return count


async def test_an_idle_connection_holds_no_writer_task(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    clients = [await connect(nursery, hub, SUBSCRIBER, "pdfm", ip=f"192.0.2.{i}") for i in (1, 2)]
    await trio.testing.wait_all_tasks_blocked()
    assert _writer_tasks() == 0
    # A publish of several events queues them: one writer per connection starts, writes
    # everything and ends again.
    hub.publish("pdfm", event("pdfm", "A"))
    hub.publish("pdfm", event("pdfm", "B"))
    assert _writer_tasks() == 2
    for client in clients:
        assert [(await client.receive())["message"] for _ in "AB"] == ["A", "B"]
    await trio.testing.wait_all_tasks_blocked()
    assert _writer_tasks() == 0
    hub.publish("pdfm", event("pdfm", "C"))
    for client in clients:
        assert (await client.receive())["message"] == "C"
