"""Serving one subscriber connection: the trio tasks that drive its `Session`.

Each connection gets a nursery holding a reader and, while there is something queued, a
writer task. They hold no state of their own: what a connection is doing lives in its
`Session` (see `hubd.core.session`), which they tell what happened and ask what to do.

- The writer takes frames from the session's mailbox and writes them; it is the only task
  that sends queued frames, so they never interleave. It is started when frames are
  queued and ends when the mailbox is empty (an idle connection holds no writer task), or
  when the mailbox is closed and drained.
- The reader handles client frames (ping, client-id, errors) inside a cancel scope whose
  deadline is the heartbeat deadline (`Session.idle_deadline`). Every frame moves the
  heartbeat deadline; the scope's is re-armed lazily: when it passes and a frame came since
  it was set, the reader goes on under a new scope with the deadline the last frame gave.
  It ends when the client closes, sends a frame that is too large (1009), keeps sending
  over its frame budget (1008) or the heartbeat deadline passes (4408).
- A close requested by anyone (reader, hub, shutdown) closes the mailbox and, through
  `Session.on_close`, gives the nursery CLOSE_GRACE seconds: the writer flushes what is
  queued and reports the mailbox drained; the nursery body, which waits for that, then
  ends, and the close frame goes out last. When the peer is gone, both tasks are
  cancelled at once.
- `mailbox.on_ready` (which starts the writer) and `session.on_close` are set only while
  the nursery body runs: see `serve_session`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from hubd.core.client_frames import frame_size, handle_frame, rate_limited
from hubd.core.close_codes import CLOSE_GRACE, CLOSE_POLICY, CLOSE_TOO_BIG
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.latency import LatencyHistogram
from hubd.core.session import ClientFrame, Next, Session, notice_frame
from hubd.core.transport import Transport, TransportClosed
from hubd.logs import event
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL

log = logging.getLogger("hubd.connections")

# How many queued frames the writer takes at once; bounds what it holds outside the mailbox.
WRITE_BATCH = 64


async def serve_session(
    hub: Hub,
    session: Session,
    transport: Transport,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one registered session until it ends, then close the transport and unregister.

    The session must come from `hub.admit`; this always unregisters it, however it ends.

    Lifecycle invariant: `mailbox.on_ready` is set only while the nursery body runs.
    `on_ready` starts the writer in this connection's nursery, and a trio nursery refuses
    new tasks ("Nursery is closed to new arrivals") only once its body has exited and its
    children have ended. So the body installs the hook before anything can call it, removes
    it (and closes the mailbox) in a `finally` before it can exit, however it exits
    (normally, cancelled, or with an error), and does not exit while a requested close is
    being flushed: it waits for the writer to report the mailbox drained, at most until
    the CLOSE_GRACE deadline `Session.on_close` puts on the nursery's scope. A put,
    close or drain (a publish, `Hub.close_all`, Hypercorn's own control frames) that comes
    after that finds no hook and a closed mailbox: the frame is refused and counted, never
    an exception in the caller."""
    try:
        async with trio.open_nursery() as nursery:
            await _serve(hub, session, transport, nursery, task_status)
        if session.close_code is not None and not session.peer_closed:
            with trio.move_on_after(CLOSE_GRACE) as closing:
                closing.shield = True
                await transport.close(session.close_code, session.close_reason)
    finally:
        session.mailbox.on_ready = None  # already so; kept in case the nursery failed to open
        session.on_close = None
        hub.unregister(session)
        event(
            log,
            logging.INFO,
            "closed",
            client_id=session.client_id,
            ip=session.ip,
            principal=session.principal.name,
            channels=session.subscriptions,
            code=session.close_code if session.close_code is not None else "peer",
            reason=session.close_reason or ("client closed" if session.peer_closed else ""),
            dropped=session.mailbox.dropped_total,
        )


async def _serve(
    hub: Hub,
    session: Session,
    transport: Transport,
    nursery: trio.Nursery,
    task_status: trio.TaskStatus[None],
) -> None:
    """The nursery body of `serve_session` (see its invariant)."""
    mailbox = session.mailbox
    scope = nursery.cancel_scope
    session.serving_starts(trio.current_time())
    # The reader's scope: its deadline is the heartbeat deadline, and the writer cancels
    # it once a requested close has been flushed, so that the body can go on to the close
    # frame. `reading[0]` is the current one (see the loop below).
    reading = [trio.CancelScope(deadline=session.idle_deadline(hub.settings.idle_timeout))]
    drained = trio.Event()  # set by the writer: the mailbox is closed and empty

    wake, close_soon = _hooks(hub, session, transport, nursery, reading, drained)
    mailbox.on_ready = wake
    session.on_close = close_soon
    try:
        if session.close_code is not None:  # asked to close before it was served
            close_soon()
        # The confirmation (or a close already asked): written here when the socket takes
        # it, which spares most connections a writer task at all.
        if (mailbox or mailbox.closed) and not session.confirm_nowait():
            wake()
        task_status.started()
        while True:
            reader = reading[0]
            with reader:
                await _reader(hub, session, transport, reader)
            # The deadline is not moved on every client frame (trio's deadline heap, ~10
            # µs a frame): when it passes, the connection is idle only if nothing came
            # since it was set; else the reader goes on under the deadline the last frame
            # gives, exactly as if it had been moved all along. Cancelling the reader is
            # safe: the transports lose nothing when a receive is cancelled.
            expired = reader.cancelled_caught and not session.drained
            deadline = session.idle_deadline(hub.settings.idle_timeout)
            if not expired or deadline <= trio.current_time():
                break
            reading[0] = trio.CancelScope(deadline=deadline)
        if session.reader_ended(expired) is Next.CANCEL:
            scope.cancel()
        else:
            # A close was requested: it closed the mailbox (which woke the writer) and
            # put the CLOSE_GRACE deadline on `scope`. Stay in the body until the writer
            # has written what was accepted for this client, so that nothing accepted is
            # dropped and the close frame goes out last.
            await drained.wait()
    finally:
        # Before the body can exit (see the invariant). What still arrives is refused by
        # the closed mailbox and counted; unregister discards and counts what was queued
        # and not written.
        mailbox.on_ready = None
        session.on_close = None
        mailbox.close()


def _hooks(
    hub: Hub,
    session: Session,
    transport: Transport,
    nursery: trio.Nursery,
    reading: list[trio.CancelScope],
    drained: trio.Event,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The connection's `mailbox.on_ready` (start a writer) and `session.on_close` (bound
    the close by CLOSE_GRACE), acting on its nursery."""
    scope = nursery.cancel_scope

    def close_soon() -> None:
        # A peer that stopped reading cannot hold a closing connection open.
        scope.deadline = min(scope.deadline, trio.current_time() + CLOSE_GRACE)

    def wake() -> None:
        # A writer task runs only while there is something to write: most frames are
        # written directly (see Session.deliver), and an idle connection should not hold
        # a parked task. A cancelled connection (peer gone, or the close deadline passed)
        # writes nothing more, so it starts none. (Called on every queued frame: the
        # common case, a writer already running, is one attribute read.)
        if session.writer_running or scope.cancel_called:
            return
        if session.writer_starts():
            nursery.start_soon(writer)

    async def writer() -> None:
        try:
            closed_and_drained = await _writer(hub, session, transport)
        finally:
            session.writer_stopped()
        after = session.writer_ended(closed_and_drained)
        if after is Next.CANCEL:
            scope.cancel()  # nothing more can be written: end reader and body now
        elif after is Next.DRAINED:
            drained.set()
            reading[0].cancel()  # the reader has nothing left to answer

    return wake, close_soon


async def _writer(hub: Hub, session: Session, transport: Transport) -> bool:
    """Write what is queued, joined into as few writes as possible, until the mailbox is
    empty or the peer is gone. Returns True when the mailbox is closed and drained (the
    close frame may follow), False otherwise (empty: the next put starts a writer again).
    What that means for the connection is `serve_session`'s call."""
    mailbox = session.mailbox
    latency = hub.latency
    batch_mode = session.batch
    take = hub.settings.batch_max if batch_mode else WRITE_BATCH
    try:
        while True:
            frames = session.take_for_write(take)
            if not frames:
                return mailbox.closed  # closed: drained
            await transport.send_frames(_joined(frames) if batch_mode else frames)
            now = trio.current_time()
            _observe(latency, frames, now)
            dropped = session.drops_to_report(now) if mailbox.dropped_unreported else 0
            if dropped:
                # The oldest queued frames are the ones dropped, so the notice comes at
                # most one write after the hole (or DROP_NOTICE_EVERY after it).
                await transport.send_frames(
                    [notice_frame(notices.events_dropped(session.client_id, dropped))]
                )
            session.written()
            if mailbox:
                # More frames came while writing: let other tasks run once first, so a
                # busy connection cannot starve the rest and more can join the next write.
                await trio.lowlevel.cancel_shielded_checkpoint()
    except TransportClosed:
        session.peer_gone()
        return False


def _observe(latency: LatencyHistogram, frames: list[Frame], now: float) -> None:
    """Record each event's accept-to-write time. Events of one publish request share
    their accept time, so runs of them are recorded with one histogram update."""
    run_at = 0.0
    run = 0  # events in the current run (0: no run yet)
    for frame in frames:
        at = frame.accepted_at
        if at is None:
            continue
        if run and at == run_at:
            run += 1
            continue
        if run:
            latency.observe_many(now - run_at, run)
        run_at, run = at, 1
    if run:
        latency.observe_many(now - run_at, run)


def _joined(frames: list[Frame]) -> list[Frame]:
    """Batch mode: consecutive events become one newline-separated frame; raw wire bytes
    (the rest of a partly written frame) stay frames of their own, in place."""
    if len(frames) == 1:
        return frames
    out: list[Frame] = []
    run: list[Frame] = []
    for frame in frames:
        if frame.raw:
            if run:
                out.append(_join(run))
                run = []
            out.append(frame)
        else:
            run.append(frame)
    if run:
        out.append(_join(run))
    return out


def _join(run: list[Frame]) -> Frame:
    return run[0] if len(run) == 1 else Frame(b"\n".join([f.payload for f in run]))


async def _reader(hub: Hub, session: Session, transport: Transport, idle: trio.CancelScope) -> None:
    """Handle client frames until the peer closes, a frame is too large (close 1009) or
    the client keeps sending over its frame budget (close 1008; see
    `Session.frame_received`). Every frame, even one that is refused or over the budget,
    moves the heartbeat deadline of `idle`: it shows the client is alive. A frame over
    the budget is not handled at all (no size check, no decoding), so a flooding client
    costs little; all of them count in `hub.frame_errors`."""
    while True:
        frame = await transport.receive()
        if frame is None:
            session.peer_gone()
            return
        # Settings are read per frame so that a reload applies to open connections.
        settings = hub.settings
        hub.frames_in += 1
        rate, burst = settings.max_client_frames_per_second, settings.client_frames_burst
        verdict = session.frame_received(trio.current_time(), rate, burst)
        # The frame moved the heartbeat deadline (`last_seen`); the scope's is moved only
        # when it comes earlier (a reload shortened idle_timeout), see `_serve`.
        deadline = session.idle_deadline(settings.idle_timeout)
        if deadline < idle.deadline:
            idle.deadline = deadline
        if verdict is not ClientFrame.HANDLE:
            hub.frame_errors += 1
            if verdict is ClientFrame.CLOSE:
                session.request_close(CLOSE_POLICY, "client frame rate limit exceeded")
                return
            if verdict is ClientFrame.REFUSE:
                session.reply(rate_limited(session.client_id, rate, burst), GLOBAL)
            continue
        limit = settings.max_message_bytes
        size = frame_size(frame, limit)
        if size > limit:
            hub.frame_errors += 1
            session.request_close(CLOSE_TOO_BIG, f"message too big: {size} bytes, limit {limit}")
            return
        if not handle_frame(session, frame):
            hub.frame_errors += 1
