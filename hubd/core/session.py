"""One subscriber connection as a state machine, without I/O.

Everything that decides what happens to a connection lives here: its lifecycle state,
its close code, its client-frame budget, its heartbeat, whether a writer task runs and
when the client is owed a drop notice. The trio tasks of `hubd.core.serving` drive it:
they tell it what happened (a client frame arrived at `now`, the peer went away, a
write began or ended) and do what it answers; they keep no state of their own. It never
reads a clock (every method that needs the time takes `now`), never blocks, and never
raises for a transition that came too late (a close asked after the end is a no-op).

Lifecycle (`State`)::

    OPEN ──request_close──▶ CLOSING ──peer_gone──▶ PEER_GONE
      └───────────────────peer_gone──────────────────▲
    OPEN | CLOSING | PEER_GONE ──end (Hub.unregister)──▶ ENDED

- OPEN: admitted and registered; events are delivered.
- CLOSING: a close was asked (the first request's code and reason are kept). The mailbox
  is closed; what it holds is still written, for at most CLOSE_GRACE seconds, then the
  close frame goes out.
- PEER_GONE: the client closed or vanished; nothing more can be written to it. A close
  requested now records nothing: the connection counts as closed by the peer.
- ENDED: unregistered; the hub has forgotten it. `ended_from` keeps the state it ended in.

Alongside the lifecycle: `resume` is set while a resume from a backplane's history is
being fetched and merged (see `Hub.begin_resume`), and `writer_running` / `writing` /
`drained` say whether a writer task exists, whether it holds frames taken from the
mailbox, and whether a closed mailbox has been written out. When the reader or the
writer ends, `reader_ended` / `writer_ended` say what the serving task does next
(`Next`): cancel everything, flush before the close frame, or wait.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from hubd.core.auth import Principal
from hubd.core.close_codes import CLOSE_IDLE, CLOSE_TRY_AGAIN_LATER
from hubd.core.frame import Frame
from hubd.core.mailbox import Mailbox
from hubd.protocol.channels import GLOBAL

# Seconds a subscriber may go on receiving events after some were dropped for it before
# it is told, even while its queue never empties: a client that stays slower than its
# channels would otherwise never hear of its losses.
DROP_NOTICE_EVERY = 1.0


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    PEER_GONE = "peer_gone"
    ENDED = "ended"


class Delivery(enum.IntEnum):
    """What `Session.deliver` did with a frame. REFUSED is 0, so it reads as false."""

    REFUSED = 0
    QUEUED = 1
    WRITTEN = 2


class Next(enum.Enum):
    """What the task serving a connection does next, as the session decides it when its
    reader or writer ends."""

    # End every task of the connection now: nothing more can, or needs to, be written.
    CANCEL = "cancel"
    # A close was asked: wait until the writer has written what is queued.
    FLUSH = "flush"
    # The mailbox is closed and written out: stop reading; the close frame follows.
    DRAINED = "drained"
    # The writer ended with an empty mailbox: the next queued frame starts one again.
    WAIT = "wait"


class ClientFrame(enum.Enum):
    """What to do with a client frame, by the connection's frame budget."""

    HANDLE = "handle"
    # The first frame over the limit: not handled, answered with one error event.
    REFUSE = "refuse"
    # Over the limit again: not handled, no reply.
    DROP = "drop"
    # Over the limit by more than a burst: close the connection with 1008.
    CLOSE = "close"


@dataclass(slots=True)
class Resume:
    """A session resuming from a backplane's history, while its replay is fetched."""

    # Live events of its channels published meanwhile, bounded by the queue size.
    held: list[Frame] = field(default_factory=list)
    # Set once the replay is in the mailbox: live events up to this seq were in it.
    replayed_upto: int | None = None
    # The resume cannot be complete: more was published meanwhile than the queue holds
    # (the oldest held events were dropped), or events of its channels may never have
    # reached this hub (see Hub.missed).
    incomplete: bool = False


def notice_frame(payload: bytes) -> Frame:
    """A server notice (`events_dropped`, ...) built by `hubd.protocol.notices`: on `global`."""
    return Frame(payload, channel=GLOBAL)


_REFUSED = Delivery.REFUSED
_QUEUED = Delivery.QUEUED
_WRITTEN = Delivery.WRITTEN


@dataclass(eq=False, slots=True)
class Session:
    """One subscriber connection: its identity, its queue and its state (see the module
    docstring for the states and transitions)."""

    client_id: str
    principal: Principal
    ip: str
    subscriptions: list[str]
    mailbox: Mailbox[Frame]
    connected_at: str
    # trio time of the last frame received from the client (admission counts as one).
    last_seen: float
    # Opt-in batch mode: several queued events per text frame, newline-separated.
    batch: bool = False
    state: State = State.OPEN
    ended_from: State | None = None
    close_code: int | None = None
    close_reason: str = ""
    resume: Resume | None = None
    # Set by transports that can write without blocking: try to write these wire bytes
    # now and return how many the kernel took (0 when it cannot write at once).
    write_nowait: Callable[[bytes], int] | None = None
    # Set by the task serving the connection while it runs: called after a close was
    # requested, so that it can bound the close in time.
    on_close: Callable[[], None] | None = None
    # A writer task exists; it holds frames taken from the mailbox (`writing`).
    writer_running: bool = False
    writing: bool = False
    # The mailbox was closed and the writer has written everything in it.
    drained: bool = False
    # The confirmation is always written as a frame of its own, first.
    _confirmed: bool = False
    # The client-frame token bucket (full at connect) and frames over it since it was
    # last full.
    _tokens: float = math.inf
    _refilled: float = 0.0
    _over: int = 0
    # When drops the client has not been told of were first seen after a write.
    _owed_since: float | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.state is not State.ENDED

    @property
    def peer_closed(self) -> bool:
        """The client's own close or disconnect ended (or is ending) the session."""
        return self.state is State.PEER_GONE or self.ended_from is State.PEER_GONE

    def request_close(self, code: int, reason: str) -> None:
        """Ask the connection to close with `code`: the first request wins, and none is
        recorded once the peer is gone (nothing can be sent to it).

        The mailbox closes (its frames are still written before the close frame, within
        CLOSE_GRACE seconds, which `on_close` puts in place). Safe at any time, also
        while or after the session ends."""
        if self.state is State.OPEN:
            self.state = State.CLOSING
            self.close_code = code
            self.close_reason = reason
        self.mailbox.close()
        if self.on_close is not None:
            self.on_close()

    def peer_gone(self) -> None:
        """The client closed the connection or can no longer be written to."""
        if self.state is State.OPEN or self.state is State.CLOSING:
            self.state = State.PEER_GONE

    def end(self) -> bool:
        """The hub forgets the session (`Hub.unregister`). Returns False when it had
        already ended. Its mailbox is closed and emptied: nothing more is written."""
        if self.state is State.ENDED:
            return False
        self.ended_from = self.state
        self.state = State.ENDED
        self.mailbox.close()
        self.mailbox.discard()
        self.resume = None
        return True

    def serving_starts(self, now: float) -> None:
        """The connection is served from `now`: the time between admission and serving
        (a backplane's claim and replay, the upgrade) does not count against its first
        heartbeat period."""
        if now > self.last_seen:
            self.last_seen = now

    def reader_ended(self, idle_expired: bool) -> Next:
        """The reader returned: the peer closed, a close was asked (1008, 1009), the writer
        drained a close, or the heartbeat deadline passed (`idle_expired`; unless a close
        had already been drained, the connection is then closed with 4408).

        CANCEL when nothing is left to flush: the peer is gone, or no close was asked (the
        reader then ended because the peer is gone, and a drained mailbox that nobody
        asked to close, e.g. by a control frame overflowing it, has no close frame to
        send). Else FLUSH: what was accepted for this client is written before the close
        frame."""
        if idle_expired and not self.drained:
            self.request_close(CLOSE_IDLE, "idle timeout")
        if self.peer_closed or self.close_code is None:
            return Next.CANCEL
        return Next.FLUSH

    def writer_ended(self, closed_and_drained: bool) -> Next:
        """The writer returned (it was not cancelled): CANCEL when the peer is gone,
        DRAINED when the mailbox was closed and is now written out, else WAIT."""
        if self.peer_closed:
            return Next.CANCEL
        if closed_and_drained:
            self.drained = True
            return Next.DRAINED
        return Next.WAIT

    # -- outbound frames ----------------------------------------------------------------

    def deliver(self, frame: Frame, immediate: bool = False) -> Delivery:
        """Hand a frame to this client. With `immediate`, it is written at once when
        nothing is queued or being written and the socket takes it (no task switch);
        otherwise it is queued for the writer, which joins everything queued into one
        write.

        Returns WRITTEN, QUEUED or REFUSED (falsy); when refusing overflowed a
        `disconnect` queue, the connection is asked to close with 1013. A frame WRITTEN
        here is not recorded in the latency histogram: the caller does that, once for all
        the connections it wrote to."""
        mailbox = self.mailbox
        if (
            immediate
            and self.write_nowait is not None
            and not mailbox
            and not self.writing
            and not mailbox.closed
        ):
            wire = frame.wire
            written = self.write_nowait(wire)
            if written:
                if written < len(wire):  # the rest goes first, through the writer
                    mailbox.put_head(Frame.wire_bytes(wire[written:]))
                return _WRITTEN
        if mailbox.put(frame):
            return _QUEUED
        if mailbox.overflowed and self.close_code is None:
            self.request_close(CLOSE_TRY_AGAIN_LATER, "slow consumer: queue overflow")
        return _REFUSED

    def reply(self, payload: bytes, channel: str) -> None:
        """Send a frame (built by `hubd.protocol.notices`) on `channel` to this client
        only: written at once when the connection is idle (a pong needs no writer
        wake-up), else queued under the same overflow policy."""
        self.deliver(Frame(payload, channel=channel), immediate=True)

    # -- the writer task ----------------------------------------------------------------

    def writer_starts(self) -> bool:
        """Frames or a close arrived: True when a writer task is to start now (none
        runs); it runs until `writer_stopped`."""
        if self.writer_running:
            return False
        self.writer_running = True
        return True

    def writer_stopped(self) -> None:
        self.writer_running = False
        self.writing = False

    def take_for_write(self, most: int) -> list[Frame]:
        """The next frames to write, at most `most` (the confirmation alone, first).
        While the writer holds them, new frames queue behind them (no direct write)."""
        if not self._confirmed:
            self._confirmed = True
            most = 1
        frames = self.mailbox.take(most)
        self.writing = bool(frames)
        return frames

    def confirm_nowait(self) -> bool:
        """Write the confirmation at once, without a writer task, when it is all that is
        queued and the socket takes it (a partial write queues the rest first, for the
        writer). True: nothing is left queued; False: the caller starts the writer."""
        mailbox = self.mailbox
        write = self.write_nowait
        if write is None or self._confirmed or len(mailbox) != 1 or self.writing or mailbox.closed:
            return False
        (frame,) = mailbox.take(1)
        self._confirmed = True
        wire = frame.wire
        written = write(wire)
        if written == len(wire):
            return True
        # Not taken (0) or partly: the rest goes first, through the writer.
        mailbox.put_head(frame if not written else Frame.wire_bytes(wire[written:]))
        return False

    def written(self) -> None:
        """The frames taken last have been written."""
        self.writing = False

    def drops_to_report(self, now: float) -> int:
        """After a write at `now`: how many dropped events to tell the client of now, in
        an `events_dropped` notice (0: none, or not yet). The client is told once its
        queue is empty (the notice then follows the hole at once), or once drops have
        gone unreported for DROP_NOTICE_EVERY seconds while the queue never empties."""
        mailbox = self.mailbox
        if not mailbox.dropped_unreported:
            return 0
        if self._owed_since is None:
            self._owed_since = now
        if mailbox and now - self._owed_since < DROP_NOTICE_EVERY:
            return 0
        self._owed_since = None
        return mailbox.take_unreported_drops()

    # -- client frames ------------------------------------------------------------------

    def frame_received(self, now: float, rate: float, burst: int) -> ClientFrame:
        """A client frame arrived at `now`. Every frame, even one over the budget, shows
        the client is alive: `last_seen` moves (and with it `idle_deadline`).

        The budget is a token bucket: it refills at `rate` per second and holds at most
        `burst` (full at connect). A frame that finds no token is not handled: the first
        one of a run is answered with an error (REFUSE), the rest are dropped silently
        (DROP). Once `burst` more frames than that have come before the bucket is full
        again, CLOSE (1008). A full bucket starts the next run afresh."""
        self.last_seen = now
        tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if tokens >= burst:
            self._over = 0
        if tokens < 1.0:
            self._tokens = tokens
            self._over += 1
            if self._over > burst:
                return ClientFrame.CLOSE
            return ClientFrame.REFUSE if self._over == 1 else ClientFrame.DROP
        self._tokens = tokens - 1.0
        return ClientFrame.HANDLE

    def idle_deadline(self, idle_timeout: float) -> float:
        """When the connection is closed for silence (4408) unless a frame comes."""
        return self.last_seen + idle_timeout
