"""The connection state machine (`hubd.core.session.Session`) without a trio loop: every
transition of the lifecycle, the client-frame budget, the writer's bookkeeping and the
drop-notice timing, driven by hand with explicit times. The hub here reads a fake clock."""

from __future__ import annotations

import pytest

from hubd.core.close_codes import CLOSE_IDLE, CLOSE_REVOKED, CLOSE_TRY_AGAIN_LATER
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.session import DROP_NOTICE_EVERY, ClientFrame, Delivery, Next, Session, State

from .conftest import SUBSCRIBER, admit, make_hub


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hub_and_session(clock: Clock | None = None, **options: object) -> tuple[Hub, Session]:
    hub = make_hub(clock or Clock(), **options)
    return hub, admit(hub, SUBSCRIBER, "pdfm")


def event(n: int = 0) -> Frame:
    return Frame(b'{"n":%d}' % n, 1.0, "pdfm", n + 1)


class Socket:
    """A `write_nowait` that takes `room` bytes per call and records what it took."""

    def __init__(self, room: int = 1 << 20) -> None:
        self.room = room
        self.took: list[bytes] = []

    def __call__(self, data: bytes) -> int:
        n = min(self.room, len(data))
        if n:
            self.took.append(data[:n])
        return n


# -- lifecycle -----------------------------------------------------------------------


def test_an_admitted_session_is_open_and_registered() -> None:
    _, session = hub_and_session()
    assert session.state is State.OPEN
    assert session.registered and not session.peer_closed
    assert session.close_code is None


def test_request_close_moves_open_to_closing_and_the_first_request_wins() -> None:
    _, session = hub_and_session()
    calls: list[State] = []
    session.on_close = lambda: calls.append(session.state)
    session.request_close(CLOSE_REVOKED, "credentials revoked")
    session.request_close(CLOSE_IDLE, "idle timeout")
    assert session.state is State.CLOSING
    assert (session.close_code, session.close_reason) == (CLOSE_REVOKED, "credentials revoked")
    assert session.mailbox.closed
    # The serving task is told every time, so that it can bound the close in time.
    assert calls == [State.CLOSING, State.CLOSING]


def test_peer_gone_from_open_records_no_close_code_even_when_asked_later() -> None:
    _, session = hub_and_session()
    session.peer_gone()
    assert session.state is State.PEER_GONE and session.peer_closed
    session.request_close(CLOSE_IDLE, "idle timeout")
    assert session.state is State.PEER_GONE
    assert session.close_code is None  # counts as closed by the peer
    assert session.mailbox.closed


def test_peer_gone_while_closing_keeps_the_requested_code() -> None:
    _, session = hub_and_session()
    session.request_close(CLOSE_REVOKED, "credentials revoked")
    session.peer_gone()
    assert session.state is State.PEER_GONE
    assert session.close_code == CLOSE_REVOKED and session.peer_closed


@pytest.mark.parametrize("before", [State.OPEN, State.CLOSING, State.PEER_GONE])
def test_unregister_ends_the_session_from_any_state_once(before: State) -> None:
    hub, session = hub_and_session()
    if before is State.CLOSING:
        session.request_close(CLOSE_REVOKED, "credentials revoked")
    elif before is State.PEER_GONE:
        session.peer_gone()
    queued = len(session.mailbox)  # the confirmation
    hub.unregister(session)
    assert session.state is State.ENDED and session.ended_from is before
    assert not session.registered
    assert session.peer_closed is (before is State.PEER_GONE)
    assert session.mailbox.closed and len(session.mailbox) == 0
    assert session.mailbox.dropped_total == queued
    assert not session.end()  # a second end changes nothing
    counted = str(CLOSE_REVOKED) if before is State.CLOSING else "peer"
    assert hub.closed == {counted: 1}


def test_transitions_after_the_end_are_harmless_no_ops() -> None:
    hub, session = hub_and_session()
    hub.unregister(session)
    session.request_close(CLOSE_IDLE, "idle timeout")
    session.peer_gone()
    assert session.state is State.ENDED and session.close_code is None
    assert session.deliver(event()) is Delivery.REFUSED


# -- outbound frames ---------------------------------------------------------------------


def test_an_idle_session_takes_an_immediate_frame_straight_to_the_socket() -> None:
    _, session = hub_and_session()
    session.mailbox.take(10)  # the confirmation was written
    socket = Socket()
    session.write_nowait = socket
    frame = event()
    assert session.deliver(frame, immediate=True) is Delivery.WRITTEN
    assert socket.took == [frame.wire]
    assert len(session.mailbox) == 0


def test_a_partial_write_queues_the_rest_first() -> None:
    _, session = hub_and_session()
    session.mailbox.take(10)
    session.write_nowait = Socket(room=3)
    frame = event()
    assert session.deliver(frame, immediate=True) is Delivery.WRITTEN
    (rest,) = session.mailbox.take(10)
    assert rest.raw and rest.wire == frame.wire[3:]


def test_frames_queue_while_something_is_queued_or_being_written() -> None:
    _, session = hub_and_session()
    socket = Socket()
    session.write_nowait = socket
    # The confirmation is still queued: the event goes behind it.
    assert session.deliver(event(1), immediate=True) is Delivery.QUEUED
    assert session.take_for_write(64) and session.writing
    # The writer holds frames: a new one must not overtake them.
    session.take_for_write(64)
    session.writing = True
    assert session.deliver(event(2), immediate=True) is Delivery.QUEUED
    assert socket.took == []
    # Without `immediate`, a frame is always queued.
    session.written()
    session.mailbox.take(64)
    assert session.deliver(event(3)) is Delivery.QUEUED


def test_a_disconnect_queue_overflow_refuses_and_closes_with_1013() -> None:
    _, session = hub_and_session(queue_size=2, slow_consumer="disconnect")
    assert session.deliver(event(1)) is Delivery.QUEUED  # confirmation + 1 = full
    assert session.deliver(event(2)) is Delivery.REFUSED
    assert session.state is State.CLOSING
    assert session.close_code == CLOSE_TRY_AGAIN_LATER


# -- the writer's bookkeeping -------------------------------------------------------------


def test_one_writer_at_a_time() -> None:
    _, session = hub_and_session()
    assert session.writer_starts()
    assert not session.writer_starts()
    session.writer_stopped()
    assert session.writer_starts()


def test_the_confirmation_is_written_alone_then_batches() -> None:
    _, session = hub_and_session()
    for n in range(5):
        session.deliver(event(n))
    first = session.take_for_write(64)
    assert len(first) == 1 and session.writing
    session.written()
    assert not session.writing
    assert len(session.take_for_write(3)) == 3
    assert len(session.take_for_write(64)) == 2
    assert session.take_for_write(64) == [] and not session.writing


def test_drops_are_reported_once_the_queue_is_empty() -> None:
    _, session = hub_and_session(queue_size=2)
    for n in range(4):  # confirmation + 4 into 2 places: 3 dropped
        session.deliver(event(n))
    assert session.drops_to_report(10.0) == 0  # still queued: the hole is not reached
    session.mailbox.take(64)
    assert session.drops_to_report(10.1) == 3
    assert session.drops_to_report(10.2) == 0  # reported once


def test_drops_are_reported_after_a_while_even_if_the_queue_never_empties() -> None:
    _, session = hub_and_session(queue_size=2)
    for n in range(4):
        session.deliver(event(n))
    assert session.drops_to_report(10.0) == 0
    assert session.drops_to_report(10.0 + DROP_NOTICE_EVERY / 2) == 0
    assert session.drops_to_report(10.0 + DROP_NOTICE_EVERY) == 3


# -- client frames -----------------------------------------------------------------------


def test_the_frame_budget_refuses_once_then_drops_then_closes() -> None:
    _, session = hub_and_session()
    verdicts = [session.frame_received(50.0, 1.0, 3) for _ in range(7)]
    # 3 tokens; then a run over the limit: one error event, silent drops, and the close
    # once more than a burst (3) of frames came over it.
    over = [ClientFrame.REFUSE, ClientFrame.DROP, ClientFrame.DROP, ClientFrame.CLOSE]
    assert verdicts == [ClientFrame.HANDLE] * 3 + over


def test_the_frame_budget_refills_and_a_full_bucket_starts_afresh() -> None:
    _, session = hub_and_session()
    for _ in range(4):
        session.frame_received(50.0, 1.0, 3)  # 3 handled, the 4th refused
    assert session.frame_received(51.0, 1.0, 3) is ClientFrame.HANDLE  # one token back
    # Still the same run over the limit: no second error event.
    assert session.frame_received(51.0, 1.0, 3) is ClientFrame.DROP
    # Full again after 3 s: the next run over the limit is told again.
    verdicts = [session.frame_received(54.0, 1.0, 3) for _ in range(4)]
    assert verdicts == [ClientFrame.HANDLE] * 3 + [ClientFrame.REFUSE]


def test_every_client_frame_moves_the_heartbeat_deadline() -> None:
    clock = Clock(100.0)
    _, session = hub_and_session(clock)
    assert session.idle_deadline(30.0) == 130.0  # admission counts as a frame
    session.frame_received(110.0, 1.0, 1)
    session.frame_received(111.0, 1.0, 1)  # over the budget: still a sign of life
    assert session.idle_deadline(30.0) == 141.0


def test_the_hub_reads_only_the_clock_it_is_given() -> None:
    clock = Clock(1000.0)
    hub = make_hub(clock)
    clock.now = 1005.0
    session = admit(hub, SUBSCRIBER, "pdfm")
    assert session.last_seen == 1005.0
    clock.now = 1012.5
    assert hub.stats()["uptime_seconds"] == 12.5


# -- what the serving task does when its reader or writer ends ----------------------------


def test_serving_later_than_admission_does_not_shorten_the_first_heartbeat() -> None:
    clock = Clock(100.0)
    _, session = hub_and_session(clock)
    session.serving_starts(104.0)  # a backplane's claim and replay took 4 s
    assert session.idle_deadline(30.0) == 134.0
    session.serving_starts(90.0)  # never moves it back
    assert session.idle_deadline(30.0) == 134.0


def test_a_reader_ending_with_the_peer_gone_cancels_everything() -> None:
    _, session = hub_and_session()
    session.peer_gone()
    assert session.reader_ended(idle_expired=False) is Next.CANCEL
    assert session.close_code is None


def test_a_reader_ending_on_a_close_request_flushes_first() -> None:
    _, session = hub_and_session()
    session.request_close(CLOSE_REVOKED, "credentials revoked")
    assert session.reader_ended(idle_expired=False) is Next.FLUSH


def test_the_heartbeat_deadline_closes_with_4408_and_flushes() -> None:
    _, session = hub_and_session()
    assert session.reader_ended(idle_expired=True) is Next.FLUSH
    assert (session.close_code, session.close_reason) == (CLOSE_IDLE, "idle timeout")


def test_a_reader_cancelled_by_the_writers_drain_is_not_an_idle_timeout() -> None:
    _, session = hub_and_session()
    session.request_close(CLOSE_REVOKED, "credentials revoked")
    assert session.writer_ended(closed_and_drained=True) is Next.DRAINED
    assert session.drained
    # The writer cancelled the reader's scope: that is not the heartbeat deadline.
    assert session.reader_ended(idle_expired=True) is Next.FLUSH
    assert session.close_code == CLOSE_REVOKED


def test_a_reader_ending_without_a_close_request_cancels() -> None:
    """E.g. a control frame overflowed a `disconnect` mailbox outside `deliver`: nothing
    to flush to, no close frame of hubd's to send."""
    _, session = hub_and_session()
    assert session.reader_ended(idle_expired=False) is Next.CANCEL


def test_what_the_writers_end_means() -> None:
    _, session = hub_and_session()
    assert session.writer_ended(closed_and_drained=False) is Next.WAIT
    assert not session.drained
    session.peer_gone()
    assert session.writer_ended(closed_and_drained=True) is Next.CANCEL
    assert not session.drained


# -- the confirmation written without a writer task -----------------------------------


def _is_confirmation(wire: bytes, session: Session) -> bool:
    return wire.startswith(b"\x81") and b'"client_id":"%s"' % session.client_id.encode() in wire


def test_the_confirmation_alone_is_written_at_once_when_the_socket_takes_it() -> None:
    _, session = hub_and_session()
    session.write_nowait = socket = Socket()
    assert session.confirm_nowait() is True
    (written,) = socket.took
    assert _is_confirmation(written, session) and not session.mailbox
    # Done once: what is queued later goes the usual ways.
    session.mailbox.put(event())
    assert session.confirm_nowait() is False and len(session.mailbox) == 1


@pytest.mark.parametrize("room", [0, 7])
def test_a_confirmation_the_socket_does_not_take_whole_is_left_first_for_the_writer(
    room: int,
) -> None:
    _, session = hub_and_session()
    session.write_nowait = socket = Socket(room)
    assert session.confirm_nowait() is False
    session.mailbox.put(event(1))
    (first,) = session.take_for_write(64)  # the head comes alone
    # What the socket took and what the writer gets first are the whole frame.
    assert _is_confirmation(b"".join(socket.took) + first.wire, session)
    session.written()
    assert [f.wire for f in session.take_for_write(64)] == [event(1).wire]


def test_no_direct_confirmation_behind_other_frames_or_without_a_socket() -> None:
    _, session = hub_and_session()
    assert session.confirm_nowait() is False  # no write_nowait: the writer's job
    _, session = hub_and_session()
    session.write_nowait = socket = Socket()
    session.mailbox.put(event())  # a replay behind it: all of it goes through the writer
    assert session.confirm_nowait() is False and socket.took == []
    assert len(session.mailbox) == 2
