"""What a subscriber may send, and the answers: ping, client-id, and error events.

Plain functions without I/O: the reader in `hubd.core.serving` calls them for each frame
the connection's budget admits, and the replies go through `Session.reply`."""

from __future__ import annotations

from hubd.core.session import Session
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL, HEALTH, SYSTEM
from hubd.protocol.envelope import FrameError, decode_client_frame
from hubd.protocol.quoting import quoted


def frame_size(frame: str | bytes, limit: int) -> int:
    """The size of a client frame in bytes, exact whenever it could exceed `limit`:
    len(str) <= its UTF-8 size <= 4 * len(str), so a text is encoded only when that
    could matter."""
    if isinstance(frame, bytes) or len(frame) * 4 <= limit:
        return len(frame)
    return len(frame.encode())


def rate_limited(client_id: str, rate: float, burst: int) -> bytes:
    """The error event for the first client frame over the connection's budget."""
    # The frame is not decoded (that is the work being refused), so no ref_id to echo.
    return notices.error(
        client_id,
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
