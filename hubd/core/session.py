"""Serving one subscriber connection: a nursery with a reader and, while there is
something queued, a writer task.

- The writer takes frames from the session's mailbox and writes them; it is the only task
  that sends queued frames, so they never interleave. It is started when frames are
  queued and ends when the mailbox is empty (an idle connection holds no writer task), or
  when the mailbox is closed and drained.
- The reader handles client frames (ping, client-id, errors) inside a cancel scope whose
  deadline is the heartbeat deadline, moved on every frame. It ends when the client
  closes, sends a frame that is too large (1009) or the deadline passes (4408).
- A close requested by anyone (reader, hub, shutdown) closes the mailbox: the writer
  flushes what is queued, then ends the nursery, and the close frame goes out last.
  When the peer is gone, both tasks are cancelled at once.
"""

from __future__ import annotations

import logging

import trio

from hubd.core.frame import Frame
from hubd.core.hub import CLOSE_GRACE, CLOSE_IDLE, CLOSE_TOO_BIG, Hub, Session
from hubd.core.latency import LatencyHistogram
from hubd.core.transport import Transport, TransportClosed
from hubd.logs import event
from hubd.protocol.channels import GLOBAL, HEALTH, SYSTEM
from hubd.protocol.envelope import (
    Envelope,
    FrameError,
    decode_client_frame,
    encode_bytes,
    new_id,
    utc_timestamp,
)

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

    The session must come from `hub.admit`; this always unregisters it, however it ends."""
    settings = hub.settings  # idle_timeout and limits are read again per frame (reload)
    mailbox = session.mailbox
    try:
        async with trio.open_nursery() as nursery:
            session.scope = nursery.cancel_scope
            if session.close_code is not None:  # asked to close before it was served
                nursery.cancel_scope.deadline = trio.current_time() + CLOSE_GRACE
            running = False
            first = True

            def wake() -> None:
                # A writer task runs only while there is something to write: most frames
                # are written directly (see Session.deliver), and an idle connection
                # should not hold a parked task.
                nonlocal running, first
                if not running:
                    running = True
                    nursery.start_soon(writer, first)
                    first = False

            async def writer(first: bool) -> None:
                nonlocal running
                try:
                    await _writer(hub, session, transport, nursery.cancel_scope, first)
                finally:
                    running = False

            mailbox.on_ready = wake
            if mailbox or mailbox.closed:  # the confirmation, or a close already asked
                wake()
            task_status.started()
            try:
                with trio.CancelScope(deadline=trio.current_time() + settings.idle_timeout) as idle:
                    await _reader(hub, session, transport, idle)
                if idle.cancelled_caught:
                    session.request_close(CLOSE_IDLE, "idle timeout")
                if session.peer_closed:
                    nursery.cancel_scope.cancel()
                # Otherwise a close was requested: the writer flushes what is already
                # queued, then ends the nursery, so nothing accepted for this client is
                # dropped.
            except BaseException:
                mailbox.on_ready = None
                raise
        # Nothing may start a writer in a closed nursery; what still arrives is
        # discarded (and counted) by unregister.
        mailbox.on_ready = None
        if session.close_code is not None and not session.peer_closed:
            with trio.move_on_after(CLOSE_GRACE) as scope:
                scope.shield = True
                await transport.close(session.close_code, session.close_reason)
    finally:
        mailbox.on_ready = None
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


async def _writer(
    hub: Hub, session: Session, transport: Transport, scope: trio.CancelScope, first: bool
) -> None:
    """Write what is queued, joined into as few writes as possible, until the mailbox is
    empty (then return: the next put starts a writer again) or closed and drained (then
    end the connection's nursery, so the close frame follows)."""
    mailbox = session.mailbox
    latency = hub.latency
    batch_mode = session.batch
    take = hub.settings.batch_max if batch_mode else WRITE_BATCH
    try:
        while True:
            # The confirmation is always a frame of its own, even in batch mode.
            frames = mailbox.take(1 if first else take)
            first = False
            if not frames:
                if mailbox.closed:
                    break  # closed and drained
                return
            # While the writer holds frames, new ones queue behind them (no direct write).
            session.writing = True
            await transport.send_frames(_joined(frames) if batch_mode else frames)
            _observe(latency, frames, trio.current_time())
            if not mailbox and mailbox.dropped_unreported:
                # The client has caught up: tell it how much it missed.
                dropped = mailbox.take_unreported_drops()
                await transport.send_frames(
                    [_notice(session, "events_dropped", {"dropped": dropped})]
                )
            session.writing = False
            if mailbox:
                # More frames came while writing: let other tasks run once first, so a
                # busy connection cannot starve the rest and more can join the next write.
                await trio.lowlevel.cancel_shielded_checkpoint()
    except TransportClosed:
        session.peer_closed = True
    finally:
        session.writing = False
    scope.cancel()


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


def _notice(session: Session, message: str, body: object) -> Frame:
    return Frame(
        encode_bytes(
            Envelope(
                id=new_id(),
                event_type=GLOBAL,
                timestamp=utc_timestamp(),
                message=message,
                body=body,
                client_id=session.client_id,
            )
        )
    )


async def _reader(hub: Hub, session: Session, transport: Transport, idle: trio.CancelScope) -> None:
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
        if kind == (HEALTH, "ping"):
            if HEALTH not in session.subscriptions:
                raise FrameError(
                    "ping needs the health channel: connect with event_types=health "
                    "(the ping still counted as a heartbeat)"
                )
            session.reply(_reply(session, HEALTH, "pong", ref_id, None))
        elif kind == (SYSTEM, "client-id"):
            if SYSTEM not in session.subscriptions:
                raise FrameError(
                    "client-id needs the system channel: connect with event_types=system"
                )
            session.reply(
                _reply(session, SYSTEM, "client-id", ref_id, {"client-id": session.client_id})
            )
        elif msg.event_type == HEALTH:
            raise FrameError(f"unknown health message {msg.message!r}; accepted is 'ping'")
        elif msg.event_type == SYSTEM:
            raise FrameError(f"unknown system message {msg.message!r}; accepted is 'client-id'")
        else:
            raise FrameError(
                f"unknown event_type {msg.event_type!r}; clients may send "
                "{'event_type': 'health', 'message': 'ping'} or "
                "{'event_type': 'system', 'message': 'client-id'}"
            )
    except FrameError as exc:
        session.reply(_reply(session, GLOBAL, "error", ref_id, {"error": str(exc)}))
        return False
    return True


def _reply(
    session: Session, channel: str, message: str, ref_id: str | None, body: object
) -> Envelope:
    return Envelope(
        id=new_id(),
        ref_id=ref_id if ref_id is not None else new_id(),
        event_type=channel,
        timestamp=utc_timestamp(),
        message=message,
        body=body,
        client_id=session.client_id,
    )
