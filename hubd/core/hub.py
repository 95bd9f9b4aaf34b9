"""The hub: who is connected, what they subscribed to, and fan-out of published events.

Every method is a plain `def` and never blocks: a publish hands the encoded frame to each
subscriber's bounded mailbox and returns. Sockets are written by each connection's own
writer task (see `hubd.core.serving`). The hub reads time only through the clock it is
given: trio's by default, which a running daemon must keep, since the serving tasks
compare its readings with trio deadlines; tests that drive the hub without a trio run
pass a clock of their own.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable

import trio

from hubd.core import admission
from hubd.core.auth import Principal
from hubd.core.frame import Frame
from hubd.core.history import EventIds, History, Replay, parse_id
from hubd.core.latency import LatencyHistogram
from hubd.core.mailbox import Mailbox, Overflow
from hubd.core.reconfigure import restart_only
from hubd.core.rejections import Rejections
from hubd.core.resume import Resumes, replay_complete, tell_missed
from hubd.core.session import Delivery, Session
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL
from hubd.protocol.envelope import utc_timestamp
from hubd.settings import HubSettings, LimitsSettings

_WRITTEN = Delivery.WRITTEN


class Hub:
    """Registry of sessions and channel fan-out. One per process."""

    def __init__(
        self,
        settings: HubSettings,
        limits: LimitsSettings,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.settings = settings
        self.limits = limits
        self.clock = clock
        self.channels: frozenset[str] = settings.all_channels
        self.sessions: dict[str, Session] = {}
        self._subscribers: dict[str, dict[Session, None]] = {c: {} for c in self.channels}
        self._by_ip: dict[str, Session] = {}
        self.draining = False
        self.published: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        # Time from a publish being accepted to its frame being written, per delivery.
        self.latency = LatencyHistogram()
        # Drops of sessions that have ended; live sessions hold their own counts.
        self._dropped_ended = 0
        self.started_at = clock()
        # Event ids carry their publish position; recent events are kept for resuming.
        self.ids = EventIds()
        self.history = History(
            settings.history_size, settings.history_ttl, settings.history_max_bytes
        )
        # False when a backplane keeps the history instead (it then replays from there).
        self.keep_history = True
        # The highest event seq published here so far (events arrive in seq order when a
        # backplane orders them; the in-memory hub numbers them itself).
        self.last_seq = 0
        # Sessions resuming from a replay the backplane is still fetching: what is
        # published to their channels meanwhile waits (see begin_resume).
        self._resumes = Resumes(self._subscribers)
        self._empty = trio.Event()
        self._empty.set()
        # Counters for /metrics and stats: connections accepted, rejected (by HTTP status,
        # and by status and reason), closed by close code ("peer" when the client closed
        # or went away), drops by channel, client frames received and refused.
        self.accepted = 0
        self.rejected = Rejections()
        self.closed: Counter[str] = Counter()
        self.dropped_by_channel: Counter[str] = Counter()
        self.frames_in = 0
        self.frame_errors = 0
        # `events_dropped` notices sent because events may never have reached this hub
        # (see `missed`), by reason.
        self.missed_notices: Counter[str] = Counter()

    # -- connections -------------------------------------------------------------------

    def check_admission(
        self, principal: Principal, ip: str, event_types: str | None, since: str | None
    ) -> list[str]:
        """The rules of `admit`, in its order, changing nothing: the channels the
        subscriber would get, or the `HubError` it would be refused with."""
        if self.draining:
            raise admission.draining()
        subscriptions = admission.check_subscriber(
            principal, event_types, self.channels, self.settings.max_channels_per_request
        )
        if self.limits.one_connection_per_ip and ip in self._by_ip:
            raise admission.ip_in_use(ip)
        if since is not None:
            admission.check_since(since)
        if len(self.sessions) >= self.limits.max_connections:
            raise admission.at_capacity(self.limits.max_connections)
        return subscriptions

    def admit(
        self,
        principal: Principal,
        ip: str,
        event_types: str | None,
        *,
        batch: bool = False,
        since: str | None = None,
    ) -> Session:
        """Check a new subscriber against every rule and register it.

        Raises `HubError`: 503 draining, 403 no subscriber role, 400 unknown channel,
        403 channel outside the allow-list, 409 this IP already has a connection,
        503 at `limits.max_connections`. On success the session is registered and its
        mailbox already holds the confirmation frame, ahead of any event. With `since`
        (an event id), every held event of its channels published after that one follows,
        then a `replay_complete` notice, then live events: nothing can be published in
        between, so there is no gap and no duplicate."""
        subscriptions = self.check_admission(principal, ip, event_types, since)
        session = Session(
            client_id=str(uuid.uuid4()),
            principal=principal,
            ip=ip,
            subscriptions=subscriptions,
            mailbox=Mailbox(self.settings.queue_size, Overflow(self.settings.slow_consumer)),
            connected_at=utc_timestamp(),
            batch=batch,
            last_seen=self.clock(),
        )
        session.mailbox.on_drop = self._count_drop
        session.mailbox.put(
            Frame(
                notices.confirmation(session.client_id, subscriptions, batch, session.connected_at)
            )
        )
        if since is not None:
            self._replay(session, since)
        self.sessions[session.client_id] = session
        for channel in subscriptions:
            self._subscribers[channel][session] = None
        # Kept whatever the limit says, so that turning it on by a reload sees who is here.
        self._by_ip[ip] = session
        self.accepted += 1
        self._empty = trio.Event() if self._empty.is_set() else self._empty
        return session

    def _replay(self, session: Session, since: str) -> None:
        replay = self.replay(session.subscriptions, since)
        frames = [frame.replayed() for frame in replay.frames]
        frames.append(replay_complete(session, len(replay.frames), replay.complete))
        session.mailbox.extend(frames)

    def _count_drop(self, frame: Frame) -> None:
        if frame.channel is not None:
            self.dropped_by_channel[frame.channel] += 1

    def unregister(self, session: Session, *, refused: bool = False) -> None:
        """Forget a session and release its IP slot at once. Idempotent. `refused`: it
        was admitted here but refused before the upgrade (by the backplane), so it counts
        as a rejection rather than an accepted and closed connection."""
        if not session.end():
            return
        if refused:
            self.accepted -= 1
        elif session.close_code is not None:
            self.closed[str(session.close_code)] += 1
        else:
            self.closed["peer"] += 1
        self._resumes.forget(session)
        self._dropped_ended += session.mailbox.dropped_total
        self.sessions.pop(session.client_id, None)
        for channel in session.subscriptions:
            self._subscribers[channel].pop(session, None)
        if self._by_ip.get(session.ip) is session:
            del self._by_ip[session.ip]
        if not self.sessions:
            self._empty.set()

    @property
    def dropped(self) -> int:
        """Frames accepted for a subscriber but never written to it, since start."""
        return self._dropped_ended + sum(s.mailbox.dropped_total for s in self.sessions.values())

    def subscriber_counts(self) -> dict[str, int]:
        """Open connections subscribed to each channel."""
        return {c: len(s) for c, s in sorted(self._subscribers.items())}

    def stats(self) -> dict[str, object]:
        """Totals, per-channel counts, uptime and the delivery-latency histogram."""
        subscribers = self.subscriber_counts()
        return {
            "uptime_seconds": round(self.clock() - self.started_at, 3),
            "connections": len(self.sessions),
            "draining": self.draining,
            "published": sum(self.published.values()),
            "delivered": sum(self.delivered.values()),
            "dropped": self.dropped,
            "queued": sum(len(s.mailbox) for s in self.sessions.values()),
            "channels": {
                c: {
                    "subscribers": n,
                    "published": self.published[c],
                    "delivered": self.delivered[c],
                }
                for c, n in subscribers.items()
            },
            "delivery_latency": self.latency.snapshot(),
        }

    def close_all(self, code: int, reason: str) -> None:
        """Ask every connection to close (queued frames are flushed first)."""
        for session in list(self.sessions.values()):
            session.request_close(code, reason)

    def reconfigure(self, settings: HubSettings, limits: LimitsSettings) -> list[str]:
        """Apply new hub and limits settings to the running hub (a reload). Connections
        stay; queue bounds and policies change for every mailbox, the other values apply
        from the next frame or connection. Returns what could not be applied (the text
        names the key), which keeps its old value until a restart."""
        settings, kept = restart_only(self.settings, settings)
        for channel in settings.all_channels - self.channels:
            self._subscribers[channel] = {}
        self.channels = settings.all_channels
        policy = Overflow(settings.slow_consumer)
        for session in self.sessions.values():
            session.mailbox.capacity = settings.queue_size
            session.mailbox.policy = policy
        self.settings = settings
        self.limits = limits
        # Applied at once: a lowered bound frees its memory now, not at the next publish.
        self.history.resize(
            settings.history_size if self.keep_history else 0,
            settings.history_ttl,
            settings.history_max_bytes,
            self.clock(),
        )
        return kept

    async def wait_empty(self) -> None:
        """Return once no session is registered."""
        await self._empty.wait()

    # -- events ------------------------------------------------------------------------

    def publish(
        self,
        channel: str,
        frame: Frame,
        target: Session | None = None,
        *,
        immediate: bool = False,
        seq: int | None = None,
    ) -> int:
        """Hand one encoded frame to every subscriber of `channel` (or to `target` only).

        The same `Frame` object goes to every subscriber, so it is encoded and framed
        once. `immediate` lets idle connections take it with a non-blocking write right here
        (for a lone event: lowest latency, no task switch); without it, it is queued so
        each connection's writer can send several events in one write. Returns how many
        subscribers accepted it. `seq` (from `ids.next()`) keeps a broadcast event in the
        channel's history for resuming clients; targeted events are not kept. Never blocks."""
        self.published[channel] += 1
        if target is not None:
            state = target.resume
            if state is not None and state.replayed_upto is None:
                # Resuming: it waits behind the replay, like every live event.
                state.held.append(frame)
                self.delivered[channel] += 1
                if seq is not None and seq > self.last_seq:
                    self.last_seq = seq
                return 1
            receivers: Iterable[Session] = (target,)
        else:
            receivers = self._subscribers[channel]
            if seq is not None:
                at = frame.accepted_at
                self.history.append(channel, seq, frame, self.clock() if at is None else at)
        accepted = written = 0
        for session in receivers:
            outcome = session.deliver(frame, immediate)
            if outcome:
                accepted += 1
                if outcome is _WRITTEN:
                    written += 1
        if seq is not None and seq > self.last_seq:
            self.last_seq = seq
        if self._resumes.sessions and target is None:
            accepted += self._resumes.hold(channel, frame)
        if written and frame.accepted_at is not None:
            # One clock read for every connection written to here: they were all written
            # within this call.
            self.latency.observe_many(self.clock() - frame.accepted_at, written)
        self.delivered[channel] += accepted
        return accepted

    # -- resuming from a backplane's history ----------------------------------------------

    def begin_resume(self, session: Session) -> None:
        """Take a just-admitted session out of live delivery while its replay is fetched
        (from a backplane, which takes a round trip): what its channels publish meanwhile
        is held, and `finish_resume` merges the two without a gap or a duplicate."""
        self._resumes.begin(session)

    def finish_resume(
        self, session: Session, replayed: list[Frame], complete: bool, upto: int
    ) -> None:
        """Queue the replay (in seq order), `replay_complete`, then the held live events
        the replay did not already carry, and put the session back in live delivery.

        `upto` is the seq the replay is complete up to: the backplane's numbering when
        it read the history (at least the resume point), so no event at or below it is
        sent again. Events reach this hub in seq order, so once it has seen `upto` no
        duplicate can follow; until then, later events up to it are skipped."""
        self._resumes.finish(session, replayed, complete, upto, self.last_seq)

    def missed(self, channels: Iterable[str] | None, count: int, reason: str) -> int:
        """Events of `channels` (None: of any channel) may never have reached this hub
        (its backplane lost them): tell every session subscribed to one of them (see
        `resume.tell_missed`). Returns how many sessions were told. Never blocks."""
        told = tell_missed(self.sessions.values(), channels, count, reason)
        self.missed_notices[reason] += told
        return told

    # -- numbering and history kept by a backplane ---------------------------------------

    @property
    def epoch(self) -> str:
        """The epoch of the event ids issued and understood here."""
        return self.ids.epoch

    def parse_since(self, since: str) -> int | None:
        """The seq of event id `since` when it is of this hub's epoch, else None (an id
        from before a restart or a renumbering: nothing is known after it)."""
        return parse_id(since, self.ids.epoch)

    def replay(self, channels: list[str], since: str) -> Replay:
        """What this hub's own history holds of `channels` after event id `since`."""
        return self.history.replay(channels, self.parse_since(since), self.clock())

    def history_elsewhere(self) -> None:
        """A backplane keeps the history and replays from it: this hub keeps none of its
        own, from now on and after any reload. Call it before anything is published."""
        self.keep_history = False
        self.history.size = 0

    def adopt_numbering(self, epoch: str, seq: int | None = None) -> None:
        """A backplane numbers this hub's events: the ids it issues carry `epoch`, which
        is then the one `parse_since` understands. With `seq` (its first connection,
        before it delivers anything), numbering resumes from there: `last_seq` becomes
        `seq`, so only later events count as new."""
        if seq is not None:
            self.last_seq = seq
        self.ids.epoch = epoch

    def mark_seen(self, seq: int) -> None:
        """The backplane's event `seq` needs no delivery here (addressed to a client
        elsewhere, on a channel this hub lacks, or covered by a catch-up): messages at or
        below it that come later are duplicates. `last_seq` only grows; a session waiting
        for `seq` to finish its resume is not woken by this (only a published event
        does that)."""
        if seq > self.last_seq:
            self.last_seq = seq

    def renumbered(self) -> None:
        """The backplane's numbering started again (its store lost its data): sessions
        waiting for an old seq would wait forever, so they rejoin live delivery now."""
        self.last_seq = 0
        self._resumes.renumbered()

    # -- subscriptions -----------------------------------------------------------------

    def find(self, client_id: str) -> Session:
        session = self.sessions.get(client_id)
        if session is None:
            raise admission.unknown_client(client_id)
        return session

    def remove_channels(self, session: Session, channels: list[str]) -> None:
        """Take `channels` (subscribed, not global) from a session and tell the client
        with an `unsubscribed` notice."""
        if not channels:
            return
        for channel in channels:
            session.subscriptions.remove(channel)
            self._subscribers[channel].pop(session, None)
        session.reply(
            notices.unsubscribed(session.client_id, channels, session.subscriptions), GLOBAL
        )
