"""The direct write path: a lone event is handed to an idle connection's `session.write_nowait`
(a non-blocking write) from the publish call itself instead of waking its writer task;
anything else is queued. A partial write queues the rest (`Frame.wire_bytes`) first, and
the writer sends such raw bytes as they are and alone, also in batch mode.

Sessions are served over `MemoryTransport` on trio's virtual clock; `session.write_nowait` is a
plain function that records the bytes it is given and says how many it "took"."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio
from hypercorn.protocol.h11 import H11Protocol
from trio.testing import MockClock, wait_all_tasks_blocked
from wsproto.frame_protocol import FrameProtocol, Opcode

from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.publishing import publish_request
from hubd.core.serving import _joined
from hubd.protocol.envelope import Envelope, encode_bytes
from hubd.protocol.notices import CONFIRMATION
from hubd.protocol.wsframe import text_frame
from hubd.web.seam.direct_write import HypercornTransport

from .conftest import (
    PUBLISHER,
    SUBSCRIBER,
    Client,
    StalledTransport,
    fresh_ip,
    make_hub,
    publish_body,
    serve,
)

# -- helpers -------------------------------------------------------------------------------


def fake_direct(*answers: int | None) -> tuple[Callable[[bytes], int], list[bytes]]:
    """A `session.write_nowait` stand-in and the list of bytes it was handed, one item per call.

    The i-th call takes `answers[i]` bytes (None: all of them); once the answers run out,
    every call takes all it is given."""
    calls: list[bytes] = []

    def direct(data: bytes) -> int:
        i = len(calls)
        calls.append(data)
        take = answers[i] if i < len(answers) else None
        return len(data) if take is None else take

    return direct, calls


class WireTransport(StalledTransport):
    """A `MemoryTransport` that records every `send_frames` call (the frames the writer
    handed over, as a real socket transport would write their `wire` bytes). Event frames
    still reach the client end as text; raw frames (no JSON behind them) do not."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[Frame]] = []

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        self.writes.append(list(frames))
        await super().send_frames([f for f in frames if not f.raw])

    def frames_after(self, call: int) -> list[Frame]:
        """Every frame the writer handed over from the `call`-th write on, in order."""
        return [f for write in self.writes[call:] for f in write]

    def bytes_after(self, call: int) -> bytes:
        return b"".join(f.wire for f in self.frames_after(call))


def envelope(i: int, channel: str = "pdfm") -> bytes:
    return encode_bytes(
        Envelope(id=f"{i:064d}", event_type=channel, timestamp="t", message="SEQ", body=i)
    )


def seq_frame(i: int, channel: str = "pdfm") -> Frame:
    """A published-event frame, stamped with the current (virtual) time."""
    return Frame(envelope(i, channel), trio.current_time())


def messages(data: bytes) -> list[str]:
    """The text messages a client reads from these bytes (all must be complete frames)."""
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    out: list[str] = []
    for frame in proto.received_frames():
        assert frame.opcode is Opcode.TEXT
        assert frame.frame_finished and frame.message_finished
        assert isinstance(frame.payload, str)
        out.append(frame.payload)
    return out


async def settle() -> None:
    """Let every task run until all are blocked (a sliver of virtual time passes)."""
    await trio.sleep(0.001)


async def serve_direct(
    nursery: trio.Nursery,
    hub: Hub,
    *answers: int | None,
    event_types: str = "pdfm,health",
    batch: bool = False,
) -> tuple[Client, WireTransport, list[bytes]]:
    """Admit and serve a session, then give it a fake `direct`; return once it is idle:
    the confirmation has been written (through the writer: the fake is attached after it,
    so that `answers` apply to what the test publishes), the mailbox is empty and no
    writer runs."""
    session = hub.admit(SUBSCRIBER, fresh_ip(), event_types, batch=batch)
    direct, calls = fake_direct(*answers)
    transport = WireTransport()
    client = await serve(nursery, hub, session, transport)
    confirmation = await client.receive()
    assert confirmation["message"] == CONFIRMATION
    await settle()
    session.write_nowait = direct
    assert not session.mailbox
    assert not session.writing
    assert len(transport.writes) == 1
    return client, transport, calls


async def test_the_confirmation_is_written_directly_without_a_writer_task(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    direct, calls = fake_direct()
    session.write_nowait = direct
    transport = WireTransport()
    await serve(nursery, hub, session, transport)
    await settle()
    (written,) = calls
    assert messages(written)[0].startswith('{"id":')
    assert CONFIRMATION in messages(written)[0]
    assert transport.writes == []  # no writer ran
    assert not session.mailbox and not session.writer_running


async def test_a_confirmation_the_socket_refuses_goes_through_the_writer(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    direct, calls = fake_direct(0)  # the socket is full
    session.write_nowait = direct
    transport = WireTransport()
    client = await serve(nursery, hub, session, transport)
    assert (await client.receive())["message"] == CONFIRMATION
    assert len(calls) == 1 and len(transport.writes) == 1


# -- Frame.wire_bytes ----------------------------------------------------------------------


def test_wire_bytes_frame_is_raw_and_its_wire_is_the_bytes_given() -> None:
    data = b"\x01\x02partial rest of a frame"
    frame = Frame.wire_bytes(data)
    assert frame.raw is True
    assert frame.wire is data
    assert frame.accepted_at is None  # never observed by the latency histogram
    assert frame.payload == b""


def test_ordinary_frames_are_not_raw() -> None:
    frame = Frame(envelope(1), 5.0)
    assert frame.raw is False
    assert frame.wire == text_frame(envelope(1))
    assert Frame(b"{}").raw is False


# -- _joined: batch mode keeps raw bytes alone, in place ------------------------------------


def test_joined_keeps_a_single_frame_as_it_is() -> None:
    one = [Frame(envelope(1))]
    assert _joined(one) is one
    raw = [Frame.wire_bytes(b"rest")]
    assert _joined(raw) is raw


def test_joined_joins_a_run_of_events_with_newlines() -> None:
    frames = [Frame(envelope(i)) for i in range(3)]
    (joined,) = _joined(frames)
    assert joined.payload == b"\n".join(f.payload for f in frames)
    assert joined.raw is False


def test_joined_keeps_raw_frames_in_place_and_joins_the_runs_around_them() -> None:
    e = [Frame(envelope(i)) for i in range(5)]
    raw1 = Frame.wire_bytes(b"rest-1")
    raw2 = Frame.wire_bytes(b"rest-2")
    out = _joined([raw1, e[0], e[1], raw2, e[2], e[3], e[4]])
    assert len(out) == 4
    assert out[0] is raw1
    assert out[1].payload == e[0].payload + b"\n" + e[1].payload
    assert out[2] is raw2
    assert out[3].payload == b"\n".join([e[2].payload, e[3].payload, e[4].payload])


def test_joined_a_lone_event_between_raw_frames_is_kept_as_it_is() -> None:
    e = [Frame(envelope(i)) for i in range(2)]
    raw1 = Frame.wire_bytes(b"a")
    raw2 = Frame.wire_bytes(b"b")
    out = _joined([e[0], raw1, raw2, e[1]])
    assert out == [e[0], raw1, raw2, e[1]]
    assert all(a is b for a, b in zip(out, [e[0], raw1, raw2, e[1]], strict=True))


def test_joined_only_raw_frames_stay_separate() -> None:
    raws = [Frame.wire_bytes(bytes([i]) * 3) for i in range(3)]
    out = _joined(raws)
    assert out == raws
    assert all(f.raw for f in out)


# -- a lone event on an idle connection is written directly --------------------------------


async def test_lone_published_event_is_handed_to_direct_and_not_queued(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub)
    session = client.session
    result = publish_request(
        hub, PUBLISHER, publish_body({"event_type": "pdfm", "message": "ONE", "body": 1})
    )
    assert len(calls) == 1
    (text,) = messages(calls[0])
    # Exactly the event's text frame, nothing more.
    assert calls[0] == text_frame(text.encode())
    event = json.loads(text)
    assert (event["id"], event["message"], event["body"]) == (result.ids[0], "ONE", 1)
    assert not session.mailbox
    assert hub.delivered["pdfm"] == 1
    await settle()
    assert len(transport.writes) == 1  # the writer wrote nothing more
    assert calls == [calls[0]]


async def test_hub_publish_direct_hands_over_frame_wire_itself(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub)
    frame = seq_frame(1)
    assert hub.publish("pdfm", frame, immediate=True) == 1
    assert calls == [frame.wire]
    assert calls[0] is frame.wire
    assert not client.session.mailbox
    await settle()
    assert len(transport.writes) == 1


async def test_direct_write_is_one_latency_observation_of_the_time_since_accept(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    await trio.sleep(1)  # virtual time starts at 0: make the stamp a real time
    _, _, calls = await serve_direct(nursery, hub)
    frame = seq_frame(1)
    assert frame.accepted_at is not None and frame.accepted_at > 0
    await trio.sleep(0.25)
    assert hub.latency.count == 0
    hub.publish("pdfm", frame, immediate=True)
    assert calls == [frame.wire]
    assert hub.latency.count == 1
    assert hub.latency.sum == pytest.approx(0.25)
    await settle()
    assert hub.latency.count == 1  # not observed again by the writer


async def test_fan_out_writes_directly_to_idle_sessions_and_queues_for_busy_ones(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    idle = [await serve_direct(nursery, hub) for _ in range(3)]
    busy = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")  # confirmation still queued
    busy_direct, busy_calls = fake_direct()
    busy.write_nowait = busy_direct
    frame = seq_frame(7)
    assert hub.publish("pdfm", frame, immediate=True) == 4
    for client, _, calls in idle:
        assert calls == [frame.wire]
        assert calls[0] is frame.wire  # built once for everyone
        assert not client.session.mailbox
    assert busy_calls == []
    assert len(busy.mailbox) == 2
    assert hub.delivered["pdfm"] == 4


# -- a batch publish is queued -------------------------------------------------------------


async def test_batch_publish_request_never_calls_direct(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub)
    events = [{"event_type": "pdfm", "message": "SEQ", "body": i} for i in range(3)]
    publish_request(hub, PUBLISHER, publish_body(*events))
    assert calls == []
    assert len(client.session.mailbox) == 3
    for i in range(3):
        assert (await client.receive())["body"] == i
    await settle()
    assert calls == []
    written = transport.frames_after(1)
    assert [json.loads(f.payload)["body"] for f in written] == [0, 1, 2]
    assert not any(f.raw for f in written)


async def test_a_one_event_array_counts_as_a_lone_event(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """`immediate=` follows the number of events, not the request shape: `[event]` is answered
    as a batch (`ids`) but its one event is written directly like a lone one."""
    hub = make_hub()
    client, _, calls = await serve_direct(nursery, hub)
    publish_request(
        hub, PUBLISHER, publish_body({"event_type": "pdfm", "message": "A"}, batch=True)
    )
    assert len(calls) == 1
    assert not client.session.mailbox


async def test_hub_publish_without_direct_is_queued(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub)
    frame = seq_frame(1)
    hub.publish("pdfm", frame)  # direct defaults to False
    assert calls == []
    assert len(client.session.mailbox) == 1
    assert (await client.receive())["body"] == 1
    await settle()
    assert transport.frames_after(1) == [frame]


# -- no direct write when the connection is not idle ---------------------------------------


async def test_no_direct_write_while_the_confirmation_is_still_queued(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    direct, calls = fake_direct()
    session.write_nowait = direct
    publish_request(hub, PUBLISHER, publish_body({"event_type": "pdfm", "message": "EARLY"}))
    frame = seq_frame(2)
    hub.publish("pdfm", frame, immediate=True)
    assert calls == []
    assert len(session.mailbox) == 3
    client = await serve(nursery, hub, session, WireTransport())
    assert (await client.receive())["message"] == CONFIRMATION
    assert (await client.receive())["message"] == "EARLY"
    assert (await client.receive())["body"] == 2
    await settle()
    assert calls == []


async def test_no_direct_write_while_frames_are_queued(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """The first lone event finds the socket full (0 taken) and is queued; the next one,
    published before the writer ran, queues behind it although the socket would take it."""
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub, 0)
    first, second = seq_frame(1), seq_frame(2)
    hub.publish("pdfm", first, immediate=True)
    hub.publish("pdfm", second, immediate=True)
    assert calls == [first.wire]
    assert len(client.session.mailbox) == 2
    assert (await client.receive())["body"] == 1
    assert (await client.receive())["body"] == 2
    await settle()
    assert transport.frames_after(1) == [first, second]
    assert calls == [first.wire]


async def test_no_direct_write_while_the_writer_holds_frames(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub)
    session = client.session
    transport.stall()
    held, behind, later = seq_frame(1), seq_frame(2), seq_frame(3)
    hub.publish("pdfm", held)  # queued; the writer takes it and blocks writing it
    await settle()
    assert session.writing is True
    assert not session.mailbox
    hub.publish("pdfm", behind, immediate=True)
    assert calls == []
    assert len(session.mailbox) == 1
    transport.resume()
    assert (await client.receive())["body"] == 1
    assert (await client.receive())["body"] == 2
    await settle()
    assert session.writing is False
    # Idle again: the next lone event is written directly.
    hub.publish("pdfm", later, immediate=True)
    assert calls == [later.wire]
    assert transport.frames_after(1) == [held, behind]


async def test_no_direct_write_once_the_mailbox_is_closed(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub)
    session = client.session
    session.request_close(1001, "going away")
    assert session.mailbox.closed and not session.mailbox and not session.writing
    assert hub.publish("pdfm", seq_frame(1), immediate=True) == 0
    assert calls == []
    assert session.mailbox.dropped_total == 1
    assert hub.delivered["pdfm"] == 0
    closed = await client.expect_close()
    assert closed.code == 1001
    assert len(transport.writes) == 1
    assert hub.dropped == 1


async def test_socket_full_queues_the_frame_for_the_writer(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    await trio.sleep(1)
    client, transport, calls = await serve_direct(nursery, hub, 0)
    result = publish_request(hub, PUBLISHER, publish_body({"event_type": "pdfm", "message": "X"}))
    assert len(calls) == 1
    assert len(client.session.mailbox) == 1
    assert hub.latency.count == 0  # not written yet
    event = await client.receive()
    assert event["id"] == result.ids[0]
    await settle()
    (written,) = transport.frames_after(1)
    assert written.raw is False
    assert written.wire == calls[0]  # the whole frame, once
    assert hub.latency.count == 1  # observed by the writer only


# -- a partial write queues the rest first -------------------------------------------------


async def test_partial_write_queues_the_rest_as_raw_bytes_first(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    await trio.sleep(1)
    client, transport, calls = await serve_direct(nursery, hub, 7)
    session = client.session
    first, second = seq_frame(1), seq_frame(2)
    assert hub.publish("pdfm", first, immediate=True) == 1
    assert calls == [first.wire]
    assert len(session.mailbox) == 1  # the rest of `first`
    assert hub.latency.count == 1
    hub.publish("pdfm", second, immediate=True)  # queued behind the rest
    # A lone publish request: immediate=True, but it queues too.
    publish_request(hub, PUBLISHER, publish_body({"event_type": "pdfm", "message": "S", "body": 3}))
    assert len(calls) == 1
    assert len(session.mailbox) == 3
    # Text frames reach the client end of the MemoryTransport; the raw rest does not.
    assert (await client.receive())["body"] == 2
    assert (await client.receive())["body"] == 3
    await settle()
    written = transport.frames_after(1)
    assert [f.raw for f in written] == [True, False, False]
    assert written[0].wire == first.wire[7:]
    assert written[1] is second
    assert json.loads(written[2].payload)["body"] == 3
    # On the wire: the part `direct` took, then the writer's bytes: whole frames, in order.
    stream = calls[0][:7] + transport.bytes_after(1)
    assert [json.loads(m)["body"] for m in messages(stream)] == [1, 2, 3]
    assert stream.startswith(first.wire + second.wire)
    # The rest is not an event: one observation per event, none for the rest.
    assert hub.latency.count == 3


async def test_after_the_rest_is_written_the_connection_is_idle_again(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, transport, calls = await serve_direct(nursery, hub, 3)
    first, second = seq_frame(1), seq_frame(2)
    hub.publish("pdfm", first, immediate=True)
    await settle()
    (rest,) = transport.frames_after(1)
    assert rest.raw and rest.wire == first.wire[3:]
    assert not client.session.mailbox and not client.session.writing
    hub.publish("pdfm", second, immediate=True)
    assert calls == [first.wire, second.wire]
    assert not client.session.mailbox
    assert messages(calls[0][:3] + rest.wire + calls[1]) == [first.text, second.text]


async def test_batch_mode_writes_the_rest_alone_and_joins_the_events_after_it(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=8)
    client, transport, calls = await serve_direct(nursery, hub, 5, batch=True)
    first, second, third = seq_frame(1), seq_frame(2), seq_frame(3)
    hub.publish("pdfm", first, immediate=True)
    hub.publish("pdfm", second, immediate=True)
    hub.publish("pdfm", third, immediate=True)
    assert calls == [first.wire]
    raw = await client.receive_raw()
    assert raw == second.text + "\n" + third.text
    await settle()
    # The rest of the cut frame is written on its own, then the events joined.
    rest_write, events_write = transport.writes[1:]
    assert len(rest_write) == 1
    assert rest_write[0].raw and rest_write[0].wire == first.wire[5:]
    assert len(events_write) == 1 and not events_write[0].raw
    assert events_write[0].payload == second.payload + b"\n" + third.payload
    stream = calls[0][:5] + transport.bytes_after(1)
    assert messages(stream) == [first.text, raw]


# -- known bugs ----------------------------------------------------------------------------


async def test_drop_oldest_overflow_never_discards_the_rest_of_a_partial_write(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2, slow_consumer="drop_oldest")
    _, transport, calls = await serve_direct(nursery, hub, 5)
    first, second, third = seq_frame(1), seq_frame(2), seq_frame(3)
    hub.publish("pdfm", first, immediate=True)
    hub.publish("pdfm", second, immediate=True)  # mailbox: [rest, second]
    hub.publish("pdfm", third, immediate=True)  # full: drop_oldest pops the rest
    await settle()
    stream = calls[0][:5] + transport.bytes_after(1)
    # Whatever was dropped, the frame the socket took in part must be completed first.
    assert stream.startswith(first.wire)
    assert messages(stream)[0] == first.text


async def test_disconnect_overflow_completes_a_partial_write_before_the_close(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    client, transport, calls = await serve_direct(nursery, hub, 5)
    first = seq_frame(1)
    hub.publish("pdfm", first, immediate=True)
    hub.publish("pdfm", seq_frame(2), immediate=True)
    hub.publish("pdfm", seq_frame(3), immediate=True)
    # The rest of the cut frame sits outside the queue's capacity: the fourth event
    # overflows the two queued ones and closes with 1013.
    hub.publish("pdfm", seq_frame(4), immediate=True)
    closed = await client.expect_close()
    assert closed.code == 1013
    # Before the close frame goes out, the bytes on the wire must end on a frame boundary.
    stream = calls[0][:5] + transport.bytes_after(1)
    assert stream.startswith(first.wire)


# The fast path's own fallback: when Hypercorn holds its send lock (a pong or close frame
# being written to a slow socket), `HypercornTransport.send_frames` hands its data to
# `stream.send`, which `attach` has replaced; the writer's bytes must still be written.


class _TCPServer:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.send_lock = trio.Lock()
        self.stream = stream

    async def protocol_send(self, event: Any) -> None:  # as Hypercorn's TCPServer
        async with self.send_lock:
            await self.stream.send_all(event.data)


class _H11Protocol(H11Protocol):  # `_tcp_server` checks the class; nothing else is used
    def __init__(self, server: _TCPServer) -> None:
        self.send = server.protocol_send  # type: ignore[assignment]

    async def stream_send(self, event: Any) -> None:
        await self.send(event)


class _WSStream:
    def __init__(self, proto: _H11Protocol) -> None:
        self.send = proto.stream_send
        self.closed = False
        self.stream_id = 1


async def test_fastpath_send_frames_waits_for_hypercorns_lock_and_writes(
    nursery: trio.Nursery,
) -> None:
    ours, peer = trio.socket.socketpair()
    with ours, peer:
        await _fastpath_fallback(nursery, ours, peer)


async def _fastpath_fallback(
    nursery: trio.Nursery, ours: trio.socket.SocketType, peer: trio.socket.SocketType
) -> None:
    server = _TCPServer(trio.SocketStream(ours))
    stream = _WSStream(_H11Protocol(server))
    transport = HypercornTransport(None, None, stream)
    hub = make_hub()
    session = hub.admit(SUBSCRIBER, fresh_ip(), "pdfm")
    session.mailbox.take(1)  # the confirmation
    transport.attach(session)
    assert session.write_nowait == transport.try_write
    frame = seq_frame(1)
    done = trio.Event()

    async def writer() -> None:
        session.writing = True  # as `_writer` does around send_frames
        await transport.send_frames([frame])
        session.writing = False
        done.set()

    async with server.send_lock:  # Hypercorn is in the middle of its own write
        assert session.write_nowait(b"x") == 0  # try_write backs off while the lock is held
        nursery.start_soon(writer)
        await wait_all_tasks_blocked()
        assert not done.is_set(), "send_frames returned without writing"
    await done.wait()
    assert not session.mailbox
    with trio.fail_after(5):
        assert await peer.recv(65536) == frame.wire
