"""The hub: who is connected, what they subscribed to, and fan-out of published events.

Every method is a plain `def` and never blocks: a publish hands the encoded frame to each
subscriber's bounded mailbox and returns. Sockets are written by each connection's own
writer task (see `hubd.core.session`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec
import trio

from hubd.core.auth import Principal
from hubd.core.errors import HubError, too_many_channels
from hubd.core.frame import Frame
from hubd.core.history import EventIds, History, Replay, is_event_id, parse_id
from hubd.core.latency import LatencyHistogram
from hubd.core.mailbox import Mailbox, Overflow
from hubd.protocol import notices
from hubd.protocol.channels import (
    GLOBAL,
    TooManyChannelsError,
    UnknownChannelError,
    normalize,
    parse_event_types,
)
from hubd.protocol.envelope import utc_timestamp
from hubd.protocol.quoting import quoted
from hubd.settings import HubSettings, LimitsSettings

CLOSE_GOING_AWAY = 1001
# The client broke the WebSocket protocol (sent by the server layer, see hubd.web.server).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
# Policy violation: the client kept sending frames over its rate limit.
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_REVOKED = 4401
CLOSE_IDLE = 4408
# How long a closing connection may spend flushing its queue, and then its close frame.
CLOSE_GRACE = 2.0

# What Session.deliver did with a frame.
REFUSED = 0
QUEUED = 1
WRITTEN = 2

CONFIRMATION_MESSAGE = notices.CONFIRMATION


@dataclass(eq=False, slots=True)
class Session:
    """One subscriber connection as the hub sees it."""

    client_id: str
    principal: Principal
    ip: str
    subscriptions: list[str]
    mailbox: Mailbox[Frame]
    connected_at: str
    # Opt-in batch mode: several queued events per text frame, newline-separated.
    batch: bool = False
    close_code: int | None = None
    close_reason: str = ""
    # Set when the client's own close or disconnect ended the session.
    peer_closed: bool = False
    registered: bool = field(default=True)
    # The connection's task scope, once it is being served: a close request gives it
    # CLOSE_GRACE seconds to flush, so a peer that stopped reading cannot hold it open.
    scope: trio.CancelScope | None = None
    # Set by transports that can write without blocking: try to write these wire bytes
    # now and return how many the kernel took (0 when it cannot write at once).
    direct: Callable[[bytes], int] | None = None
    # True while the writer task holds frames it took from the mailbox.
    writing: bool = False
    # trio time of the last frame received from the client (admission counts as one).
    last_seen: float = 0.0

    def request_close(self, code: int, reason: str) -> None:
        """Ask the connection to close with `code`; the first request wins, and none is
        recorded once the peer is gone (nothing can be sent to it: it counts as "peer").

        Frames already queued are still written before the close frame, for at most
        `CLOSE_GRACE` seconds. Safe to call at any time, also while or after the session
        ends: closing the mailbox wakes the writer only while the connection's nursery
        body runs (see `serve_session`), so it never raises."""
        if self.close_code is None and not self.peer_closed:
            self.close_code = code
            self.close_reason = reason
        self.mailbox.close()
        if self.scope is not None:
            self.scope.deadline = min(self.scope.deadline, trio.current_time() + CLOSE_GRACE)

    def deliver(self, frame: Frame, direct: bool = False) -> int:
        """Hand a frame to this client. With `direct`, it is written at once when nothing
        is queued or being written and the socket takes it (no task switch); otherwise it
        is queued for the writer, which joins everything queued into one write.

        Returns WRITTEN, QUEUED or REFUSED (0, falsy); when refusing overflowed a
        `disconnect` queue, the connection is asked to close with 1013. A frame WRITTEN
        here is not recorded in the latency histogram: the caller does that, once for all
        the connections it wrote to."""
        mailbox = self.mailbox
        if (
            direct
            and self.direct is not None
            and not mailbox
            and not self.writing
            and not mailbox.closed
        ):
            wire = frame.wire
            written = self.direct(wire)
            if written:
                if written < len(wire):  # the rest goes first, through the writer
                    mailbox.put_head(Frame.wire_bytes(wire[written:]))
                return WRITTEN
        if mailbox.put(frame):
            return QUEUED
        if mailbox.overflowed and self.close_code is None:
            self.request_close(CLOSE_TRY_AGAIN_LATER, "slow consumer: queue overflow")
        return REFUSED

    def reply(self, payload: bytes, channel: str) -> None:
        """Send a frame (built by `hubd.protocol.notices`) on `channel` to this client
        only: written at once when the connection is idle (a pong needs no writer
        wake-up), else queued under the same overflow policy."""
        self.deliver(Frame(payload, channel=channel), direct=True)


def notice_frame(payload: bytes) -> Frame:
    """A server notice (`events_dropped`, ...) built by `hubd.protocol.notices`: on `global`."""
    return Frame(payload, channel=GLOBAL)


def unknown_client(client_id: str) -> HubError:
    return HubError(404, "unknown_client", f"no connected client has client_id {quoted(client_id)}")


def check_owner(principal: Principal, owner: str, client_id: str) -> None:
    """403 unless `principal` owns the connection (by name) or is an admin."""
    if owner != principal.name and not principal.is_admin:
        raise HubError(
            403,
            "forbidden",
            f"client {quoted(client_id)} belongs to another principal; only its owner or an "
            "admin may unsubscribe it",
        )


def check_since(since: str) -> None:
    """400 unless `since` looks like an event id (whether it is known is another matter)."""
    if not is_event_id(since):
        raise HubError(
            400,
            "bad_request",
            f"since={quoted(since)} is not an event id; use the 64-hex-digit id of the last "
            "event received (or leave it out)",
        )


@dataclass(slots=True)
class _Resume:
    held: list[Frame] = field(default_factory=list)
    # Set once the replay is in the mailbox: live events up to this seq were in it.
    replayed_upto: int | None = None
    # The resume cannot be complete: more was published meanwhile than the queue holds
    # (the oldest held events were dropped), or events of its channels may never have
    # reached this hub (see Hub.missed).
    incomplete: bool = False


@dataclass(frozen=True, slots=True)
class UnsubscribeResult:
    client_id: str
    unsubscribed: list[str]
    ignored: list[str]
    subscriptions: list[str]


class Hub:
    """Registry of sessions and channel fan-out. One per process."""

    def __init__(self, hub: HubSettings, limits: LimitsSettings) -> None:
        self.settings = hub
        self.limits = limits
        self.channels: frozenset[str] = hub.all_channels
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
        self.started_at = trio.current_time()
        # Event ids carry their publish position; recent events are kept for resuming.
        self.ids = EventIds()
        self.history = History(hub.history_size, hub.history_ttl, hub.history_max_bytes)
        # False when a backplane keeps the history instead (it then replays from there).
        self.keep_history = True
        # The highest event seq published here so far (events arrive in seq order when a
        # backplane orders them; the in-memory hub numbers them itself).
        self.last_seq = 0
        # Sessions resuming from a replay the backplane is still fetching: what is
        # published to their channels meanwhile waits here (see begin_resume).
        self._resuming: dict[Session, _Resume] = {}
        self._empty = trio.Event()
        self._empty.set()
        # Counters for /metrics and stats: connections accepted, rejected by HTTP status,
        # closed by close code ("peer" when the client closed or went away), drops by
        # channel, client frames received and refused.
        self.accepted = 0
        self.rejected: Counter[int] = Counter()
        self.closed: Counter[str] = Counter()
        self.dropped_by_channel: Counter[str] = Counter()
        self.frames_in = 0
        self.frame_errors = 0
        # `events_dropped` notices sent because events may never have reached this hub
        # (see `missed`), by reason.
        self.missed_notices: Counter[str] = Counter()

    # -- connections -------------------------------------------------------------------

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
        if self.draining:
            raise HubError(
                503, "draining", "the server is shutting down; reconnect to another node or retry"
            )
        if not principal.can_subscribe:
            raise HubError(
                403,
                "forbidden",
                f"principal {principal.name!r} lacks the 'subscriber' role needed to subscribe",
            )
        try:
            subscriptions = parse_event_types(
                event_types, self.channels, self.settings.max_channels_per_request
            )
        except TooManyChannelsError as exc:
            raise too_many_channels(exc.count, exc.limit) from None
        except UnknownChannelError as exc:
            raise HubError(400, "unknown_channel", str(exc)) from None
        denied = [c for c in subscriptions if not principal.allows(c)]
        if denied:
            allowed = ", ".join(sorted(principal.channels or ()))
            raise HubError(
                403,
                "forbidden",
                f"principal {principal.name!r} may not subscribe to "
                f"{', '.join(repr(c) for c in denied)}; its channels are: global, {allowed}",
            )
        if self.limits.one_connection_per_ip and ip in self._by_ip:
            raise HubError(
                409,
                "ip_in_use",
                f"client IP {ip} already has an open connection; one connection per IP is "
                "allowed (close it first)",
            )
        if since is not None:
            check_since(since)
        if len(self.sessions) >= self.limits.max_connections:
            raise HubError(
                503,
                "at_capacity",
                f"the server holds its maximum of {self.limits.max_connections} connections; "
                "retry later",
            )
        session = Session(
            client_id=str(uuid.uuid4()),
            principal=principal,
            ip=ip,
            subscriptions=subscriptions,
            mailbox=Mailbox(self.settings.queue_size, Overflow(self.settings.slow_consumer)),
            connected_at=utc_timestamp(),
            batch=batch,
            last_seen=trio.current_time(),
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
        frames.append(self._replay_complete(session, len(replay.frames), replay.complete))
        session.mailbox.extend(frames)

    def _replay_complete(self, session: Session, replayed: int, complete: bool) -> Frame:
        return notice_frame(notices.replay_complete(session.client_id, replayed, complete))

    def _count_drop(self, frame: Frame) -> None:
        if frame.channel is not None:
            self.dropped_by_channel[frame.channel] += 1

    def unregister(self, session: Session, *, refused: bool = False) -> None:
        """Forget a session and release its IP slot at once. Idempotent. `refused`: it
        was admitted here but refused before the upgrade (by the backplane), so it counts
        as a rejection rather than an accepted and closed connection."""
        if not session.registered:
            return
        session.registered = False
        if refused:
            self.accepted -= 1
        elif session.close_code is not None:
            self.closed[str(session.close_code)] += 1
        else:
            self.closed["peer"] += 1
        session.mailbox.close()
        session.mailbox.discard()
        self._resuming.pop(session, None)
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
            "uptime_seconds": round(trio.current_time() - self.started_at, 3),
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

    def reconfigure(self, hub: HubSettings, limits: LimitsSettings) -> list[str]:
        """Apply new hub and limits settings to the running hub (a reload). Connections
        stay; queue bounds and policies change for every mailbox, the other values apply
        from the next frame or connection. Returns what could not be applied (the text
        names the key), which keeps its old value until a restart."""
        kept: list[str] = []
        removed = self.channels - hub.all_channels
        if removed:
            kept.append(
                "hub.channels: removing "
                + ", ".join(repr(c) for c in sorted(removed))
                + " needs a restart; the channel list is unchanged"
            )
            hub = msgspec.structs.replace(hub, channels=list(self.settings.channels))
        if hub.compression != self.settings.compression:
            kept.append("hub.compression: a change needs a restart")
            hub = msgspec.structs.replace(hub, compression=self.settings.compression)
        for channel in hub.all_channels - self.channels:
            self._subscribers[channel] = {}
        self.channels = hub.all_channels
        policy = Overflow(hub.slow_consumer)
        for session in self.sessions.values():
            session.mailbox.capacity = hub.queue_size
            session.mailbox.policy = policy
        self.settings = hub
        self.limits = limits
        # Applied at once: a lowered bound frees its memory now, not at the next publish.
        self.history.resize(
            hub.history_size if self.keep_history else 0,
            hub.history_ttl,
            hub.history_max_bytes,
            trio.current_time(),
        )
        return kept

    def revoke(self, lookup: Callable[[Principal], Principal | None]) -> tuple[int, int]:
        """Re-check every connection's credential after a reload. `lookup` returns the
        principal now configured for a connection's credential, or None if it is gone.

        Gone, or no longer allowed to subscribe: closed with 4401. Still there: the
        connection takes the new principal, and loses (with an `unsubscribed` notice) the
        channels its new allow-list no longer admits. Returns (closed, narrowed)."""
        closed = narrowed = 0
        for session in list(self.sessions.values()):
            if session.close_code is not None:
                continue
            now = lookup(session.principal)
            if now is None or not now.can_subscribe:
                session.request_close(CLOSE_REVOKED, "credentials revoked")
                closed += 1
                continue
            session.principal = now
            denied = [c for c in session.subscriptions if not now.allows(c)]
            if denied:
                self._remove(session, denied)
                narrowed += 1
        return closed, narrowed

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
        direct: bool = False,
        seq: int | None = None,
    ) -> int:
        """Hand one encoded frame to every subscriber of `channel` (or to `target` only).

        The same `Frame` object goes to every subscriber, so it is encoded and framed
        once. `direct` lets idle connections take it with a non-blocking write right here
        (for a lone event: lowest latency, no task switch); without it, it is queued so
        each connection's writer can send several events in one write. Returns how many
        subscribers accepted it. `seq` (from `ids.next()`) keeps a broadcast event in the
        channel's history for resuming clients; targeted events are not kept. Never blocks."""
        self.published[channel] += 1
        if target is not None:
            state = self._resuming.get(target) if self._resuming else None
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
                at = frame.queued_at
                self.history.append(channel, seq, frame, trio.current_time() if at is None else at)
        accepted = written = 0
        for session in receivers:
            outcome = session.deliver(frame, direct)
            if outcome:
                accepted += 1
                if outcome == WRITTEN:
                    written += 1
        if seq is not None and seq > self.last_seq:
            self.last_seq = seq
        if self._resuming and target is None:
            accepted += self._hold_for_resume(channel, frame)
        if written and frame.queued_at is not None:
            # One clock read for every connection written to here: they were all written
            # within this call.
            self.latency.observe_many(trio.current_time() - frame.queued_at, written)
        self.delivered[channel] += accepted
        return accepted

    # -- resuming from a backplane's history ----------------------------------------------

    def begin_resume(self, session: Session) -> None:
        """Take a just-admitted session out of live delivery while its replay is fetched
        (from a backplane, which takes a round trip): what its channels publish meanwhile
        is held, and `finish_resume` merges the two without a gap or a duplicate."""
        for channel in session.subscriptions:
            self._subscribers[channel].pop(session, None)
        self._resuming[session] = _Resume()

    def finish_resume(
        self, session: Session, replayed: list[Frame], complete: bool, upto: int
    ) -> None:
        """Queue the replay (in seq order), `replay_complete`, then the held live events
        the replay did not already carry, and put the session back in live delivery.

        `upto` is the seq the replay is complete up to: the backplane's numbering when
        it read the history (at least the resume point), so no event at or below it is
        sent again. Events reach this hub in seq order, so once it has seen `upto` no
        duplicate can follow; until then, later events up to it are skipped."""
        state = self._resuming.get(session)
        if state is None or not session.registered:
            return
        frames = [frame.replayed() for frame in replayed]
        frames.append(
            self._replay_complete(session, len(replayed), complete and not state.incomplete)
        )
        frames.extend(f for f in state.held if f.seq > upto)
        session.mailbox.extend(frames)
        if self.last_seq >= upto:
            self._rejoin(session)
        else:
            state.held = []
            state.replayed_upto = upto

    def _hold_for_resume(self, channel: str, frame: Frame) -> int:
        held = 0
        for session, state in list(self._resuming.items()):
            if channel not in session.subscriptions:
                continue
            if state.replayed_upto is None:
                if len(state.held) >= session.mailbox.capacity:
                    # Bounded like the queue: the oldest held event goes (counted),
                    # and the resume will say it is incomplete.
                    state.held.pop(0)
                    state.incomplete = True
                    session.mailbox.dropped_total += 1
                state.held.append(frame)
                held += 1
            else:
                if frame.seq > state.replayed_upto and session.deliver(frame):
                    held += 1
                if frame.seq >= state.replayed_upto:
                    self._rejoin(session)
        return held

    def _rejoin(self, session: Session) -> None:
        self._resuming.pop(session, None)
        for channel in session.subscriptions:
            self._subscribers[channel][session] = None

    def missed(self, channels: Iterable[str] | None, count: int, reason: str) -> int:
        """Events of `channels` (None: of any channel) may never have reached this hub
        (its backplane lost them): tell every session subscribed to one of them with an
        `events_dropped` notice, queued behind what it was sent so far and ahead of every
        event delivered after this call. `count` is at most how many events are missing
        (0: unknown). A session whose resume is still being fetched is not sent a notice:
        its `replay_complete` says `complete: false` instead. Returns how many sessions
        were told. Never blocks."""
        wanted = None if channels is None else frozenset(channels)
        told = 0
        for session in list(self.sessions.values()):
            if wanted is not None and wanted.isdisjoint(session.subscriptions):
                continue
            state = self._resuming.get(session) if self._resuming else None
            if state is not None and state.replayed_upto is None:
                state.incomplete = True
                told += 1
                continue
            if session.mailbox.closed:
                continue  # closing: it will not be sent anything more anyway
            # Room beyond the queue bound (like replay_complete): the notice neither
            # pushes an event out nor overflows a `disconnect` queue. Should later events
            # push it out, the queue's own drop notice still tells the client.
            session.mailbox.extend(
                [notice_frame(notices.events_dropped(session.client_id, count, reason))]
            )
            told += 1
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
        return self.history.replay(channels, self.parse_since(since), trio.current_time())

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
        for session, state in list(self._resuming.items()):
            if state.replayed_upto is not None:
                self._rejoin(session)

    # -- subscriptions -----------------------------------------------------------------

    def find(self, client_id: str) -> Session:
        session = self.sessions.get(client_id)
        if session is None:
            raise unknown_client(client_id)
        return session

    def unsubscribe_channels(self, channels: list[str]) -> list[str]:
        """The channels an unsubscribe request names, normalized. Raises `HubError(400)`
        for more than `hub.max_channels_per_request` names (checked first, by counting),
        an unknown channel, an empty list, or `global` alone."""
        try:
            requested = normalize(channels, self.channels, self.settings.max_channels_per_request)
        except TooManyChannelsError as exc:
            raise too_many_channels(exc.count, exc.limit) from None
        except UnknownChannelError as exc:
            raise HubError(400, "unknown_channel", str(exc)) from None
        if not requested:
            raise HubError(400, "bad_request", "event_types must list at least one channel")
        if requested == [GLOBAL]:
            raise HubError(
                400,
                "bad_request",
                "'global' cannot be unsubscribed; list other channels to remove",
            )
        return requested

    def unsubscribe(
        self, principal: Principal, client_id: str, channels: list[str]
    ) -> UnsubscribeResult:
        """Remove channels from a client's subscriptions. `global` is never removed.

        Raises `HubError`: 400 unknown channel or only `global` requested, 404 unknown
        client, 403 the client belongs to another principal (admins may act on anyone)."""
        requested = self.unsubscribe_channels(channels)
        session = self.find(client_id)
        check_owner(principal, session.principal.name, client_id)
        removed: list[str] = []
        ignored: list[str] = []
        for channel in requested:
            if channel == GLOBAL or channel not in session.subscriptions:
                ignored.append(channel)
            else:
                removed.append(channel)
        self._remove(session, removed)
        return UnsubscribeResult(
            client_id=client_id,
            unsubscribed=removed,
            ignored=ignored,
            subscriptions=list(session.subscriptions),
        )

    def _remove(self, session: Session, channels: list[str]) -> None:
        """Take `channels` (subscribed, not global) from a session and tell the client."""
        if not channels:
            return
        for channel in channels:
            session.subscriptions.remove(channel)
            self._subscribers[channel].pop(session, None)
        session.reply(
            notices.unsubscribed(session.client_id, channels, session.subscriptions), GLOBAL
        )
