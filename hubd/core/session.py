"""Serving one subscriber connection: a nursery with a reader and, while there is
something queued, a writer task.

- The writer takes frames from the session's mailbox and writes them; it is the only task
  that sends queued frames, so they never interleave. It is started when frames are
  queued and ends when the mailbox is empty (an idle connection holds no writer task), or
  when the mailbox is closed and drained.
- The reader handles client frames (ping, client-id, errors) inside a cancel scope whose
  deadline is the heartbeat deadline, moved on every frame. It ends when the client
  closes, sends a frame that is too large (1009), keeps sending over its frame rate
  (1008) or the deadline passes (4408). Each connection has a token bucket of client
  frames (`hub.max_client_frames_per_second`, `hub.client_frames_burst`).
- A close requested by anyone (reader, hub, shutdown) closes the mailbox: the writer
  flushes what is queued and reports the mailbox drained; the nursery body, which waits
  for that (at most CLOSE_GRACE), then ends, and the close frame goes out last.
  When the peer is gone, both tasks are cancelled at once.
- `mailbox.on_ready` (which starts the writer) is set only while the nursery body runs:
  see `serve_session`.
"""

from __future__ import annotations

import logging

import trio

from hubd.core.frame import Frame
from hubd.core.hub import (
    CLOSE_GRACE,
    CLOSE_IDLE,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    Hub,
    Session,
    notice_frame,
)
from hubd.core.latency import LatencyHistogram
from hubd.core.transport import Transport, TransportClosed
from hubd.logs import event
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL, HEALTH, SYSTEM
from hubd.protocol.envelope import FrameError, decode_client_frame
from hubd.protocol.quoting import quoted

log = logging.getLogger("hubd.connections")

# How many queued frames the writer takes at once; bounds what it holds outside the mailbox.
WRITE_BATCH = 64
# Seconds a subscriber may go on receiving events after some were dropped for it before
# it is told, even while its queue never empties: a client that stays slower than its
# channels would otherwise never hear of its losses.
DROP_NOTICE_EVERY = 1.0


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
    the CLOSE_GRACE deadline `Session.request_close` puts on the nursery's scope. A put,
    close or drain (a publish, `Hub.close_all`, Hypercorn's own control frames) that comes
    after that finds no hook and a closed mailbox: the frame is refused and counted, never
    an exception in the caller."""
    settings = hub.settings  # idle_timeout and limits are read again per frame (reload)
    mailbox = session.mailbox
    try:
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            session.scope = scope
            if session.close_code is not None:  # asked to close before it was served
                scope.deadline = trio.current_time() + CLOSE_GRACE
            # The reader's scope: its deadline is the heartbeat deadline (moved on every
            # client frame), and the writer cancels it once a requested close has been
            # flushed, so that the body can go on to the close frame.
            reading = trio.CancelScope(deadline=trio.current_time() + settings.idle_timeout)
            drained = trio.Event()  # set by the writer: the mailbox is closed and empty
            running = False
            first = True

            def wake() -> None:
                # A writer task runs only while there is something to write: most frames
                # are written directly (see Session.deliver), and an idle connection
                # should not hold a parked task. A cancelled connection (peer gone, or
                # the close deadline passed) writes nothing more, so it starts none.
                nonlocal running, first
                if not running and not scope.cancel_called:
                    running = True
                    nursery.start_soon(writer, first)
                    first = False

            async def writer(first: bool) -> None:
                nonlocal running
                try:
                    closed_and_drained = await _writer(hub, session, transport, first)
                finally:
                    running = False
                if session.peer_closed:
                    scope.cancel()  # nothing more can be written: end reader and body now
                elif closed_and_drained:
                    drained.set()
                    reading.cancel()  # the reader has nothing left to answer

            mailbox.on_ready = wake
            try:
                if mailbox or mailbox.closed:  # the confirmation, or a close already asked
                    wake()
                task_status.started()
                with reading:
                    await _reader(hub, session, transport, reading)
                if reading.cancelled_caught and not drained.is_set():
                    session.request_close(CLOSE_IDLE, "idle timeout")
                if session.peer_closed or session.close_code is None:
                    # The peer is gone: nothing queued can reach it, so end the writer at
                    # once. (Without a close request, the reader ends only when the peer
                    # is gone, and the writer reports a drain only of a mailbox closed
                    # by other means, e.g. a control frame overflowing it: nothing to
                    # flush to or to send a close frame for either way.)
                    scope.cancel()
                else:
                    # A close was requested: it closed the mailbox (which woke the writer)
                    # and put the CLOSE_GRACE deadline on `scope`. Stay in the body until
                    # the writer has written what was accepted for this client, so that
                    # nothing accepted is dropped and the close frame goes out last.
                    await drained.wait()
            finally:
                # Before the body can exit (see the invariant above). What still arrives is
                # refused by the closed mailbox and counted; unregister discards and counts
                # what was queued and not written.
                mailbox.on_ready = None
                mailbox.close()
        if session.close_code is not None and not session.peer_closed:
            with trio.move_on_after(CLOSE_GRACE) as closing:
                closing.shield = True
                await transport.close(session.close_code, session.close_reason)
    finally:
        mailbox.on_ready = None  # already so; kept in case the nursery failed to open
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
            dropped=mailbox.dropped_total,
        )


async def _writer(hub: Hub, session: Session, transport: Transport, first: bool) -> bool:
    """Write what is queued, joined into as few writes as possible, until the mailbox is
    empty or the peer is gone (`session.peer_closed`). Returns True when the mailbox is
    closed and drained (the close frame may follow), False otherwise (empty: the next put
    starts a writer again). What that means for the connection is `serve_session`'s call.
    """
    mailbox = session.mailbox
    latency = hub.latency
    batch_mode = session.batch
    take = hub.settings.batch_max if batch_mode else WRITE_BATCH
    owed_since: float | None = None  # when unreported drops were first seen
    try:
        while True:
            # The confirmation is always a frame of its own, even in batch mode.
            frames = mailbox.take(1 if first else take)
            first = False
            if not frames:
                return mailbox.closed  # closed: drained
            # While the writer holds frames, new ones queue behind them (no direct write).
            session.writing = True
            await transport.send_frames(_joined(frames) if batch_mode else frames)
            _observe(latency, frames, trio.current_time())
            if mailbox.dropped_unreported:
                now = trio.current_time()
                if owed_since is None:
                    owed_since = now
                if not mailbox or now - owed_since >= DROP_NOTICE_EVERY:
                    # The client has caught up (or has been behind for a while): tell it
                    # how much it missed. The oldest queued frames are the ones dropped,
                    # so the notice comes at most one write after the hole.
                    owed_since = None
                    dropped = mailbox.take_unreported_drops()
                    await transport.send_frames(
                        [notice_frame(notices.events_dropped(session.client_id, dropped))]
                    )
            session.writing = False
            if mailbox:
                # More frames came while writing: let other tasks run once first, so a
                # busy connection cannot starve the rest and more can join the next write.
                await trio.lowlevel.cancel_shielded_checkpoint()
    except TransportClosed:
        session.peer_closed = True
        return False
    finally:
        session.writing = False


def _observe(latency: LatencyHistogram, frames: list[Frame], now: float) -> None:
    """Record each event's accept-to-write time. Events of one publish request share
    their accept time, so runs of them are recorded with one histogram update."""
    run_at = 0.0
    run = 0  # events in the current run (0: no run yet)
    for frame in frames:
        at = frame.queued_at
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
    """Handle client frames until the peer closes (`session.peer_closed`), a frame is too
    large (close 1009) or the client keeps sending over its frame rate (close 1008).
    Every frame, even one that is refused or over the rate, moves the heartbeat deadline
    of `idle`: it shows the client is alive.

    The frame rate is a token bucket per connection: it refills at
    `hub.max_client_frames_per_second` and holds at most `hub.client_frames_burst` (full
    at connect). A frame that finds no token is not handled at all (no size check, no
    decoding, no reply), so a flooding client costs little: the first one of a run gets
    an error event, the rest are dropped silently; all count in `hub.frame_errors`. When
    `client_frames_burst` more frames have come over the limit before the bucket is full
    again, the connection is closed with 1008. Once the bucket is full again, the next
    run over the limit starts afresh (a new error event)."""
    tokens = float(hub.settings.client_frames_burst)
    refilled = trio.current_time()
    over = 0  # frames over the limit since the bucket was last full
    while True:
        frame = await transport.receive()
        if frame is None:
            session.peer_closed = True
            return
        # Settings are read per frame so that a reload applies to open connections.
        settings = hub.settings
        limit = settings.max_message_bytes
        now = trio.current_time()
        idle.deadline = now + settings.idle_timeout
        session.last_seen = now
        hub.frames_in += 1
        burst = settings.client_frames_burst
        tokens = min(burst, tokens + (now - refilled) * settings.max_client_frames_per_second)
        refilled = now
        if tokens >= burst:
            over = 0
        if tokens < 1.0:
            hub.frame_errors += 1
            over += 1
            if over > burst:
                session.request_close(CLOSE_POLICY, "client frame rate limit exceeded")
                return
            if over == 1:
                session.reply(
                    _rate_limited(session, settings.max_client_frames_per_second, burst), GLOBAL
                )
            continue
        tokens -= 1.0
        # len(str) <= its UTF-8 size <= 4 * len(str): encode only when it could matter.
        size = (
            len(frame)
            if isinstance(frame, bytes) or len(frame) * 4 <= limit
            else len(frame.encode())
        )
        if size > limit:
            hub.frame_errors += 1
            session.request_close(CLOSE_TOO_BIG, f"message too big: {size} bytes, limit {limit}")
            return
        if not handle_frame(session, frame):
            hub.frame_errors += 1


def _rate_limited(session: Session, rate: float, burst: int) -> bytes:
    # The frame is not decoded (that is the work being refused), so no ref_id to echo.
    return notices.error(
        session.client_id,
        None,
        f"client frame rate limit exceeded: at most "
        f"max_client_frames_per_second={rate:g} on average and "
        f"client_frames_burst={burst} at once; frames over the limit are dropped "
        "without a reply, and a client that keeps sending is closed with 1008",
    )


def handle_frame(session: Session, frame: str | bytes) -> bool:
    """Answer one client frame by queueing the reply in the session's mailbox. Returns
    False when the frame was refused (the reply is an error event)."""
    ref_id: str | None = None
    try:
        if isinstance(frame, bytes):
            raise FrameError("binary frames are not accepted; send JSON text frames")
        msg = decode_client_frame(frame)
        ref_id = msg.id
        kind = (msg.event_type, msg.message)
        if kind == (HEALTH, notices.PING):
            if HEALTH not in session.subscriptions:
                raise FrameError(
                    "ping needs the health channel: connect with event_types=health "
                    "(the ping still counted as a heartbeat)"
                )
            session.reply(notices.pong(session.client_id, ref_id), HEALTH)
        elif kind == (SYSTEM, notices.CLIENT_ID):
            if SYSTEM not in session.subscriptions:
                raise FrameError(
                    "client-id needs the system channel: connect with event_types=system"
                )
            session.reply(notices.client_id_reply(session.client_id, ref_id), SYSTEM)
        elif msg.event_type == HEALTH:
            raise FrameError(f"unknown health message {quoted(msg.message)}; accepted is 'ping'")
        elif msg.event_type == SYSTEM:
            raise FrameError(
                f"unknown system message {quoted(msg.message)}; accepted is 'client-id'"
            )
        else:
            raise FrameError(
                f"unknown event_type {quoted(msg.event_type)}; clients may send "
                "{'event_type': 'health', 'message': 'ping'} or "
                "{'event_type': 'system', 'message': 'client-id'}"
            )
    except FrameError as exc:
        session.reply(notices.error(session.client_id, ref_id, str(exc)), GLOBAL)
        return False
    return True
