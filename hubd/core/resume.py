"""Sessions resuming from a backplane's history while their replay is fetched.

A backplane replays from its own store, which takes a round trip: meanwhile the session
is out of live delivery and what its channels publish is held (bounded like its queue).
When the replay arrives it is queued, then `replay_complete`, then the held events the
replay did not carry, and the session rejoins live delivery: no gap, no duplicate. The
per-session part of this lives in `Session.resume`; this holds the index of resuming
sessions and the merge."""

from __future__ import annotations

from collections.abc import Iterable

from hubd.core.frame import Frame
from hubd.core.session import Resume, Session, notice_frame
from hubd.protocol import notices


def replay_complete(session: Session, replayed: int, complete: bool) -> Frame:
    return notice_frame(notices.replay_complete(session.client_id, replayed, complete))


class Resumes:
    """The sessions of one hub that are resuming, and the channel index they leave and
    rejoin (the hub's `channel -> sessions` map, shared)."""

    def __init__(self, subscribers: dict[str, dict[Session, None]]) -> None:
        self._subscribers = subscribers
        self.sessions: dict[Session, None] = {}

    def begin(self, session: Session) -> None:
        """Take `session` out of live delivery; what its channels publish is held."""
        for channel in session.subscriptions:
            self._subscribers[channel].pop(session, None)
        session.resume = Resume()
        self.sessions[session] = None

    def finish(
        self, session: Session, replayed: list[Frame], complete: bool, upto: int, last_seq: int
    ) -> None:
        """Queue the replay, `replay_complete` and the held events after `upto`; rejoin
        live delivery now if this hub has seen `upto` (`last_seq`), else at the first
        event at or past it (see `hold`)."""
        state = session.resume
        if state is None or not session.registered:
            return
        frames = [frame.replayed() for frame in replayed]
        frames.append(replay_complete(session, len(replayed), complete and not state.incomplete))
        frames.extend(f for f in state.held if f.seq > upto)
        session.mailbox.extend(frames)
        if last_seq >= upto:
            self.rejoin(session)
        else:
            state.held = []
            state.replayed_upto = upto

    def hold(self, channel: str, frame: Frame) -> int:
        """A broadcast event of `channel`: held for the sessions still fetching, delivered
        to those past their replay that lack it. Returns how many took it."""
        held = 0
        for session in list(self.sessions):
            state = session.resume
            if state is None or channel not in session.subscriptions:
                continue
            if state.replayed_upto is None:
                if len(state.held) >= session.mailbox.capacity:
                    # Bounded like the queue: the oldest held event goes (counted), and
                    # the resume will say it is incomplete.
                    state.held.pop(0)
                    state.incomplete = True
                    session.mailbox.dropped_total += 1
                state.held.append(frame)
                held += 1
            else:
                if frame.seq > state.replayed_upto and session.deliver(frame):
                    held += 1
                if frame.seq >= state.replayed_upto:
                    self.rejoin(session)
        return held

    def rejoin(self, session: Session) -> None:
        """Back in live delivery."""
        self.sessions.pop(session, None)
        session.resume = None
        for channel in session.subscriptions:
            self._subscribers[channel][session] = None

    def forget(self, session: Session) -> None:
        self.sessions.pop(session, None)

    def renumbered(self) -> None:
        """Sessions waiting for an old seq would wait forever: they rejoin now."""
        for session in list(self.sessions):
            state = session.resume
            if state is not None and state.replayed_upto is not None:
                self.rejoin(session)


def tell_missed(
    sessions: Iterable[Session], channels: Iterable[str] | None, count: int, reason: str
) -> int:
    """Events of `channels` (None: of any channel) may never have reached this hub: tell
    every session subscribed to one of them with an `events_dropped` notice (`reason`),
    queued behind what it was sent so far and ahead of every event delivered after this
    call. `count` is at most how many events are missing (0: unknown). A session whose
    resume is still being fetched is not sent a notice: its `replay_complete` says
    `complete: false` instead. Returns how many sessions were told."""
    wanted = None if channels is None else frozenset(channels)
    told = 0
    for session in list(sessions):
        if wanted is not None and wanted.isdisjoint(session.subscriptions):
            continue
        state = session.resume
        if state is not None and state.replayed_upto is None:
            state.incomplete = True
            told += 1
            continue
        if session.mailbox.closed:
            continue  # closing: it will not be sent anything more anyway
        # Room beyond the queue bound (like replay_complete): the notice neither pushes an
        # event out nor overflows a `disconnect` queue. Should later events push it out,
        # the queue's own drop notice still tells the client.
        session.mailbox.extend(
            [notice_frame(notices.events_dropped(session.client_id, count, reason))]
        )
        told += 1
    return told
