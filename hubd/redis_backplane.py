"""Several hubd nodes acting as one hub through one Redis server (coredis, on trio).

What Redis holds (all keys under `backplane.prefix`, "hubd" by default):

- `<p>:epoch`: the cluster's id epoch (8 hex), set once; `<p>:seq`: the event counter.
- `<p>:stream:<channel>`: each channel's history, a Stream capped at `hub.history_size`
  entries; entry id `<seq>-0`, fields `f` (the event's JSON) and `t` (publish time, ms).
  `<p>:evicted`: per channel, the newest seq trimmed from its stream.
- `<p>:events`: the Pub/Sub channel every node listens to; one message per event:
  `<channel>\\n<target client_id or empty>\\n<seq>\\n<events in its request>\\n<event JSON>`.
- `<p>:control`: Pub/Sub for commands to the node holding a connection (unsubscribe).
- `<p>:ip:<ip>` and `<p>:client:<client_id>`: which node holds which client IP and
  connection, as leases the node renews every `lease_seconds / 3`.

A publish is one Lua script: it numbers the events, stores them in their channel's
stream and announces them, atomically, so every node sees events in sequence order and a
node that lost its subscription can catch up exactly from the streams. Many events of a
request share that one round trip.

Every event is one message on `<p>:events` to every node, so a node knows how far behind
it is: the cluster's `<p>:seq` minus the last seq it delivered. coredis reads Pub/Sub
messages off the socket into an unbounded buffer; a node whose fan-out is slower than the
cluster's publish rate would grow it without limit. So while events flow a node compares
the two every `LAG_CHECK` seconds, and beyond `backplane.max_lag` it drops its
subscription (its own Redis connection, and with it everything buffered), subscribes
again and catches up from the streams. What the streams no longer hold, its subscribers
are told about (`Hub.missed`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from hubd.core.auth import Principal
from hubd.core.backplane import unavailable
from hubd.core.errors import HubError
from hubd.core.frame import Frame
from hubd.core.history import EPOCH_HEX, Replay, new_epoch, parse_id
from hubd.core.hub import Hub, Session, UnsubscribeResult, check_owner, unknown_client
from hubd.core.publishing import Checked, RemoteClient
from hubd.logs import event
from hubd.protocol.channels import GLOBAL
from hubd.protocol.envelope import Envelope, encode_bytes, utc_timestamp
from hubd.settings import BackplaneSettings

log = logging.getLogger("hubd.backplane")

_ID_PLACEHOLDER = "0" * 64
# encode_bytes(Envelope(id=...)) starts with this, then the id, then a closing quote.
_ID_PREFIX = b'{"id":"'
_REST_AT = len(_ID_PREFIX) + 64 + 1

# KEYS: seq. ARGV: prefix, epoch, history_size, now_ms, then per event: channel, target,
# random tail (40 hex), the event JSON after its id.
_PUBLISH = """
local prefix, epoch, size, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', prefix .. ':epoch') ~= epoch then
  -- Redis lost its data since this node connected: numbering must start again.
  return redis.error_reply('HUBD_EPOCH the epoch changed')
end
local n = (#ARGV - 4) / 4
local seq = redis.call('INCRBY', KEYS[1], n) - n
local ids = {}
for i = 0, n - 1 do
  local channel, target = ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  seq = seq + 1
  local id = epoch .. string.format('%016x', seq) .. ARGV[7 + 4 * i]
  local payload = '{"id":"' .. id .. '"' .. ARGV[8 + 4 * i]
  if target == '' and size > 0 then
    local key = prefix .. ':stream:' .. channel
    local excess = redis.call('XLEN', key) - size + 1
    if excess > 0 then
      -- Remember the newest event this XADD trims: a resume from before it is incomplete.
      local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
      redis.call('HSET', prefix .. ':evicted', channel,
                 string.match(gone[#gone][1], '^(%d+)'))
    end
    redis.call('XADD', key, 'MAXLEN', size, seq .. '-0', 'f', payload, 't', now)
  end
  redis.call('PUBLISH', prefix .. ':events',
             channel .. '\\n' .. target .. '\\n' .. seq .. '\\n' .. n .. '\\n' .. payload)
  ids[i + 1] = id
end
return ids
"""

# ARGV: prefix, after (seq), then channels. One consistent read (nothing is published
# in between): the current seq, the epoch, then per channel its stream entries past
# `after` and the newest seq trimmed from it.
_SNAPSHOT = """
local prefix, after = ARGV[1], ARGV[2]
local out = {redis.call('GET', prefix .. ':seq') or '0',
             redis.call('GET', prefix .. ':epoch') or ''}
for i = 3, #ARGV do
  out[#out + 1] = redis.call('XRANGE', prefix .. ':stream:' .. ARGV[i], '(' .. after .. '-0', '+')
  out[#out + 1] = redis.call('HGET', prefix .. ':evicted', ARGV[i]) or '0'
end
return out
"""

# KEYS: ip key, client key. ARGV: owner value, lease ms, node, principal, subscriptions,
# "1" to claim the IP exclusively (limits.one_connection_per_ip) or "0".
_CLAIM = """
if ARGV[6] == '0' or redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[2], 'node', ARGV[3], 'principal', ARGV[4], 'subs', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# ARGV: lease ms, node, then per connection: ip key, owner value, client key,
# subscriptions, principal, "1" if the IP is claimed exclusively. An exclusive claim
# Redis lost (restarted without persistence) is made again; one another node took
# meanwhile is left to it.
_RENEW = """
for i = 3, #ARGV, 6 do
  local holder = redis.call('GET', ARGV[i])
  if holder == false and ARGV[i + 5] == '1' then
    redis.call('SET', ARGV[i], ARGV[i + 1], 'PX', ARGV[1])
  elseif holder == ARGV[i + 1] then
    redis.call('PEXPIRE', ARGV[i], ARGV[1])
  end
  redis.call('HSET', ARGV[i + 2], 'node', ARGV[2], 'principal', ARGV[i + 4],
             'subs', ARGV[i + 3])
  redis.call('PEXPIRE', ARGV[i + 2], ARGV[1])
end
return 1
"""

# KEYS: ip key, client key. ARGV: owner value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
"""

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,
    # A wrong password or a missing permission: unavailable (and logged), not a crash.
    coredis.exceptions.AuthenticationError,
    coredis.exceptions.AuthorizationError,
    coredis.exceptions.BusyLoadingError,
    OSError,
    TimeoutError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    EOFError,
)


_REDIS_ERRORS: tuple[type[BaseException], ...] = (
    *_CONNECTION_ERRORS,
    coredis.exceptions.RedisError,
)


def _connection_error(exc: BaseException) -> BaseException | None:
    """The connection failure inside `exc` (coredis raises them in exception groups from
    its task groups), or None when it is something else. Any error reply from Redis
    counts (out of memory, read-only replica, BUSY, ...): the backplane is unavailable
    until it answers normally again, which is logged and retried, never a crash."""
    if isinstance(exc, _REDIS_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _connection_error(inner)
            if found is not None:
                return found
    return None


def _cancellation(exc: BaseException) -> BaseException | None:
    """The trio cancellation inside `exc`, if any: while being cancelled, coredis may
    also report the connection it is tearing down as closed, which is not a failure."""
    if isinstance(exc, trio.Cancelled):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        cancelled, _ = exc.split(trio.Cancelled)
        return cancelled
    return None


BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
RELEASE_QUEUE = 10_000
# Seconds between two lag checks (a GET of the cluster's seq) while events flow.
LAG_CHECK = 0.1
# The reason `Hub.missed` gives subscribers when the backplane lost events for them.
GAP = "backplane_gap"


class _LagCutoff(Exception):
    """This node is more than `max_lag` events behind: drop the subscription."""

    def __init__(self, behind: int, limit: int) -> None:
        super().__init__(f"{behind} events behind, more than backplane.max_lag={limit}")
        self.behind = behind
        self.limit = limit


def _lag_cutoff(exc: BaseException) -> _LagCutoff | None:
    """The cutoff inside `exc`, unless it is being cancelled: tearing the subscription
    down may add connection errors to the group, which the new subscription will meet
    again if they are real."""
    if isinstance(exc, _LagCutoff):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        if _cancellation(exc) is not None:
            return None
        for inner in exc.exceptions:
            found = _lag_cutoff(inner)
            if found is not None:
                return found
    return None


def _client_options(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    options: dict[str, Any] = {}
    if parts.scheme == "unix":
        options["unix_socket_path"] = parts.path
        db = parse_qs(parts.query).get("db", ["0"])[-1]
        options["db"] = int(db) if db.isdigit() else 0
    else:
        options["host"] = parts.hostname or "127.0.0.1"
        options["port"] = parts.port or 6379
        options["ssl"] = parts.scheme == "rediss"
        db = parts.path.strip("/")
        options["db"] = int(db) if db.isdigit() else 0
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return options


class RedisBackplane:
    """A node of a hubd cluster sharing one Redis. See the module docstring."""

    def __init__(self, hub: Hub, settings: BackplaneSettings, node: str | None = None) -> None:
        self.hub = hub
        self.settings = settings
        self.node = node or random.getrandbits(64).to_bytes(8, "big").hex()
        self.prefix = settings.prefix
        self._client: coredis.Redis[bytes] | None = None
        self._why = "not connected yet"
        self._connected = trio.Event()
        self._releases_send, self._releases = trio.open_memory_channel[tuple[str, str, str]](
            RELEASE_QUEUE
        )
        self.releases_dropped = 0
        # Every subscriber's claim: client_id -> (ip key, owner value, client key).
        # Every subscriber's claim: client_id -> (ip key, owner value, client key, exclusive).
        self._claims: dict[str, tuple[str, str, str, bool]] = {}
        self._epoch_seen: str | None = None
        self._was_up = False  # connected since the last failure
        self._reset = trio.Event()
        self._options = _client_options(settings.url)
        # Set when Redis was found to have lost its data: the next catch-up tells every
        # subscriber that events may be missing.
        self._renumbered = False
        # The seq of the previous Pub/Sub message of the current subscription (0: none yet).
        self._previous = 0
        # The cluster's seq when the streams were last caught up from: without history,
        # what was numbered before it and not delivered is lost (and said to be), not due.
        self._caught_up = 0
        # Events the cluster had numbered and this node had not delivered, at the last
        # check; lag cutoffs and seq gaps since start (for /metrics).
        self.lag = 0
        self.lag_cutoffs = 0
        self.seq_gaps = 0
        hub.keep_history = False  # history lives in Redis; the hub need not keep its own
        hub.history.size = 0

    # -- state -------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._client is not None

    @property
    def status(self) -> str:
        return "redis: connected" if self.healthy else f"redis: unavailable ({self._why})"

    async def wait_healthy(self) -> None:
        """Return once connected (at once if already)."""
        while self._client is None:
            await self._connected.wait()

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _require(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise unavailable(self._why)
        return self._client

    def _lost(self, exc: BaseException) -> HubError:
        self._why = _describe(exc)
        return unavailable(self._why)

    # -- the connection ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, listen and renew leases; on any connection failure, mark the backplane
        unavailable, log why and reconnect with exponential backoff and jitter. Reports
        started at once: a node serves its local subscribers even while Redis is down."""
        task_status.started()
        delay = BACKOFF_FIRST
        while True:
            try:
                async with self._redis() as client:
                    await self._session(client)
            except BaseException as raised:
                cancelled = _cancellation(raised)
                if cancelled is not None:
                    self._client = None
                    raise cancelled from None
                exc = _connection_error(raised)
                if exc is None:
                    raise
                was_up, self._was_up = self._was_up, False
                if was_up:
                    delay = BACKOFF_FIRST  # a fresh outage: retry soon again
                self._client = None
                self._connected = trio.Event()
                self._why = _describe(exc)
                if was_up:
                    log.error("backplane lost: %s; publishes get 503 until it is back", self._why)
                else:
                    log.warning("backplane unavailable: %s; retrying in %.1fs", self._why, delay)
            else:  # pragma: no cover - _session only returns by raising
                self._client = None
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(BACKOFF_MAX, delay * 2)
            if self._client is None and delay >= BACKOFF_MAX:
                delay = BACKOFF_MAX

    def _redis(self) -> coredis.Redis[bytes]:
        return coredis.Redis(
            **self._options,
            decode_responses=False,
            connect_timeout=2.0,
            stream_timeout=5.0,
            retry_policy=NoRetryPolicy(),
        )

    async def _session(self, client: coredis.Redis[bytes]) -> None:
        try:
            await self._serve(client)
        finally:
            # Before the client shuts down: nothing may start using it meanwhile.
            self._client = None

    async def _serve(self, client: coredis.Redis[bytes]) -> None:
        await client.ping()
        epoch = await self._epoch(client)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    await self._listen(client, nursery, epoch)
                except BaseException as raised:
                    cutoff = _lag_cutoff(raised)
                    if cutoff is None:
                        raise
                    self.lag_cutoffs += 1
                    log.warning(
                        "backplane: this node is %d events behind the cluster, more than "
                        "backplane.max_lag=%d: dropped its Pub/Sub subscription and what it "
                        "had buffered; subscribing again and catching up from the streams "
                        "(cutoff %d since start)",
                        cutoff.behind,
                        cutoff.limit,
                        self.lag_cutoffs,
                    )

    async def _listen(
        self, client: coredis.Redis[bytes], nursery: trio.Nursery, epoch: str
    ) -> None:
        """Subscribe, catch up from the streams, then deliver until the subscription ends
        (raises) or this node falls more than `max_lag` events behind (`_LagCutoff`).

        The subscription has a Redis client of its own: dropping it (leaving its context)
        closes its connection, and with it everything coredis buffered from the socket,
        while `client` keeps serving publishes and resumes."""
        events, control = self._key("events"), self._key("control")
        async with (
            self._redis() as listener,
            listener.pubsub(channels=[events, control], retry_policy=NoRetryPolicy()) as pubsub,
            trio.open_nursery() as watching,
        ):
            # Subscribed: anything published from here on is buffered in `pubsub`.
            # Catch up from the streams first, so a lost subscription loses nothing.
            self._previous = 0
            await self._catch_up(client, watching)
            if self._client is None:  # the first subscription of this connection
                self._reset = trio.Event()  # before anyone can use the client and set it
                self._client = client
                self._was_up = True
                self._connected.set()
                await self._reclaim(client)
                event(
                    log,
                    logging.INFO,
                    "backplane connected",
                    url=_safe(self.settings.url),
                    node=self.node,
                    epoch=epoch,
                )
                nursery.start_soon(self._renew, client)
                nursery.start_soon(self._release_loop, client)
                nursery.start_soon(self._reset_on_request)
            events_b = events.encode()
            async for message in pubsub:
                if message["type"] != "message":
                    continue
                data = _bytes(message["data"])
                try:
                    if _bytes(message["channel"]) == events_b:
                        self._deliver(data)
                    else:
                        self._control(data)
                except (ValueError, HubError) as exc:
                    # A message this node cannot use (another version, another
                    # channel list) must not stop it from serving the others.
                    log.warning("backplane: ignored a message: %s: %r", exc, data[:200])
            raise coredis.exceptions.ConnectionError("subscription ended")

    async def _watch_lag(self, client: coredis.Redis[bytes]) -> None:
        """While events flow, compare the cluster's numbering with what this node has
        delivered; more than `max_lag` behind raises `_LagCutoff`. Idle, it asks nothing."""
        key = self._key("seq")
        limit = self.settings.max_lag
        hub = self.hub
        checked = -1
        while True:
            await trio.sleep(LAG_CHECK)
            delivered = hub.last_seq
            if delivered == checked and not self.lag:
                continue  # nothing delivered since the last check, and nothing was behind
            checked = delivered
            newest = await client.get(key)
            behind = (int(newest) if newest else 0) - max(hub.last_seq, self._caught_up)
            self.lag = max(0, behind)
            if behind > limit:
                raise _LagCutoff(behind, limit)

    async def _reset_on_request(self) -> None:
        await self._reset.wait()
        raise coredis.exceptions.ConnectionError("Redis lost its data: reconnecting")

    async def _epoch(self, client: coredis.Redis[bytes]) -> str:
        key = self._key("epoch")
        value = await client.get(key)
        if value is None:  # a fresh (or emptied) Redis: the first node sets the epoch
            await client.set(key, new_epoch(), condition=coredis.PureToken.NX)
            value = await client.get(key)
        epoch = value.decode() if isinstance(value, bytes) else str(value)
        if len(epoch) != EPOCH_HEX:
            raise coredis.exceptions.ConnectionError(f"{key} holds {epoch!r}, not an epoch")
        hub = self.hub
        if self._epoch_seen is None:
            # First connection: start from what Redis has numbered so far.
            current = await client.get(self._key("seq"))
            hub.last_seq = int(current) if current else 0
        elif epoch != self._epoch_seen:
            # Redis lost its data (restarted without persistence, flushed): numbering
            # starts again and the old history is gone; resumes from old ids say so.
            log.warning(
                "backplane: Redis has a new epoch %s (was %s): its history was lost; "
                "events are numbered afresh",
                epoch,
                self._epoch_seen,
            )
            hub.renumbered()
            self._renumbered = True
            self._caught_up = 0
        self._epoch_seen = epoch
        hub.ids.epoch = epoch
        return epoch

    # -- events ------------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        """One event from the cluster (this node's own included) to local subscribers."""
        # The fourth field (how many events their request held) is not used for now:
        # events are written at once even when they came in a batch, since they arrive
        # one Pub/Sub message at a time and queueing each for the writers to join was
        # measured slower (a writer start per event and connection, not per batch).
        channel_b, target_b, seq_b, _, payload = data.split(b"\n", 4)
        seq = int(seq_b)
        previous, self._previous = self._previous, seq
        if previous and seq > previous + 1:
            # Every event is one message to every node, in seq order: on one subscription
            # a gap means numbers the publish script took and never published (Redis
            # stopped it part-way, its publisher got an error). Nothing reached any node,
            # so no subscriber is told; but it should not happen.
            self.seq_gaps += 1
            log.warning(
                "backplane: events %d to %d were numbered but never published",
                previous + 1,
                seq - 1,
            )
        direct = True
        hub = self.hub
        if seq <= hub.last_seq and not target_b:
            # Already delivered by a catch-up (targeted events are not in the streams,
            # so they only ever come this way).
            return
        channel = channel_b.decode()
        frame = Frame(payload, trio.current_time(), channel, seq)
        if target_b:
            target = hub.sessions.get(target_b.decode())
            if target is None:
                hub.last_seq = max(hub.last_seq, seq)
                return
            hub.publish(channel, frame, target, direct=direct, seq=seq)
        elif channel in hub.channels:
            hub.publish(channel, frame, direct=direct, seq=seq)
        else:
            hub.last_seq = max(hub.last_seq, seq)

    async def _catch_up(self, client: coredis.Redis[bytes], watching: trio.Nursery) -> None:
        """Deliver what the streams hold past the last event this node delivered (after a
        reconnect or a lag cutoff, or everything of a new epoch; on first connect there is
        nothing), and tell the subscribers that may have lost events what the streams no
        longer hold, ahead of what is delivered here. Once the streams are read, the lag
        is watched (in `watching`): a catch-up counts as being behind."""
        hub = self.hub
        after = hub.last_seq
        snap = await self._snapshot(client, sorted(hub.channels), after)
        self._caught_up = snap.seq
        watching.start_soon(self._watch_lag, client)
        held = [entry for entry in snap.entries if entry[0] > after]
        history = hub.settings.history_size
        # Numbered since the last event delivered here and not delivered now: targeted
        # events, events trimmed from their stream, or (no history) every one of them.
        undelivered = max(0, snap.seq - after - len(held))
        if self._renumbered:
            # Redis lost its data: whatever it numbered after the last event delivered
            # here is gone, on any channel, and how much is unknown.
            self._renumbered = False
            told = hub.missed(None, 0, GAP)
            log.warning("backplane: told %d subscriber(s) that events may be lost", told)
        elif history == 0:
            # Nothing is kept to catch up from. (Some of these may still come as
            # messages, if they were published after subscribing: an upper bound.)
            told = hub.missed(None, undelivered, GAP) if undelivered else 0
            if told:
                log.warning(
                    "backplane: up to %d event(s) published while this node was not "
                    "subscribed are lost (hub.history_size = 0); told %d subscriber(s)",
                    undelivered,
                    told,
                )
        else:
            trimmed = sorted(c for c, seq in snap.evicted.items() if seq > after)
            told = hub.missed(trimmed, undelivered, GAP) if trimmed else 0
            if told:
                log.warning(
                    "backplane: the streams of %s no longer hold every event published "
                    "while this node was not subscribed (up to %d lost); told %d "
                    "subscriber(s)",
                    ", ".join(trimmed),
                    undelivered,
                    told,
                )
        for index, (seq, channel, payload, _) in enumerate(held):
            if seq > hub.last_seq:
                hub.publish(channel, Frame(payload, trio.current_time(), channel, seq), seq=seq)
            if index % 16 == 15:
                # A long catch-up must not stall the node: its connections still run.
                await trio.lowlevel.checkpoint()
        if history > 0:
            # Everything numbered so far is either delivered now or targeted (those only
            # come through Pub/Sub and are not skipped): later messages at or below this
            # seq are duplicates. Without history nothing was caught up: skip nothing.
            hub.last_seq = max(hub.last_seq, snap.seq)
        if held:
            log.warning("backplane: delivered %d event(s) missed while not subscribed", len(held))

    async def _snapshot(
        self, client: coredis.Redis[bytes], channels: list[str], after: int
    ) -> _Snapshot:
        """What the streams of `channels` hold past seq `after`, read in one step."""
        raw = await client.eval(_SNAPSHOT, keys=[], args=[self.prefix, str(after), *channels])
        assert isinstance(raw, list) and len(raw) == 2 + 2 * len(channels)
        entries: list[tuple[int, str, bytes, int]] = []
        evicted: dict[str, int] = {}
        for index, channel in enumerate(channels):
            for entry in raw[2 + 2 * index]:
                ident, flat = entry[0], entry[1]
                fields = {_bytes(flat[k]): _bytes(flat[k + 1]) for k in range(0, len(flat), 2)}
                seq = int(_bytes(ident).split(b"-", 1)[0])
                entries.append((seq, channel, fields[b"f"], int(fields[b"t"])))
            evicted[channel] = int(_bytes(raw[3 + 2 * index]))
        entries.sort(key=lambda item: item[0])
        return _Snapshot(int(_bytes(raw[0])), _bytes(raw[1]).decode(), entries, evicted)

    async def publish(self, checked: list[Checked]) -> list[str]:
        client = self._require()
        args: list[str | bytes | int] = [
            self.prefix,
            self.hub.ids.epoch,
            self.hub.settings.history_size,
            _now_ms(),
        ]
        for item in checked:
            payload = encode_bytes(
                Envelope(
                    id=_ID_PLACEHOLDER,
                    event_type=item.channel,
                    timestamp=utc_timestamp(),
                    message=item.event.message,
                    body=item.event.body,
                    client_id=item.event.client_id,
                )
            )
            args += [
                item.channel,
                item.event.client_id or "",
                random.getrandbits(160).to_bytes(20, "big").hex(),
                payload[_REST_AT:],
            ]
        try:
            ids = await client.eval(_PUBLISH, keys=[self._key("seq")], args=args)
        except _CONNECTION_ERRORS as exc:
            # Sent, but no answer: Redis may have run it. Say so rather than "nothing
            # was accepted", so that a retry is a known risk of a duplicate.
            self._lost(exc)
            raise HubError(
                504,
                "publish_outcome_unknown",
                f"the event backplane did not answer ({_describe(exc)}); the events may or "
                "may not have been published: check before retrying, or retry and tolerate "
                "a duplicate",
            ) from None
        except coredis.exceptions.RedisError as exc:
            if "HUBD_EPOCH" in str(exc):
                self._reset.set()  # reconnect: the session starts a new epoch
                raise unavailable("Redis lost its data; reconnecting") from None
            # Out of memory, read-only replica, ...: nothing was published.
            raise unavailable(_describe(exc)) from None
        assert isinstance(ids, list)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def replay(self, channels: list[str], since: str) -> Replay:
        client = self._require()
        after = parse_id(since, self.hub.ids.epoch)
        if after is None:
            return Replay([], False)
        try:
            snap = await self._snapshot(client, channels, after)
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise unavailable(_describe(exc)) from None
        if snap.epoch != self.hub.ids.epoch:
            self._reset.set()  # Redis lost its data meanwhile: reconnect into the new epoch
            return Replay([], False, after)
        history = self.hub.settings.history_size
        complete = history > 0 and all(seq <= after for seq in snap.evicted.values())
        oldest = _now_ms() - int(self.hub.settings.history_ttl * 1000)
        frames: list[Frame] = []
        for seq, channel, payload, at_ms in snap.entries:
            if at_ms < oldest:
                complete = False  # expired: no longer held
                continue
            frames.append(Frame(payload, None, channel, seq))
        # Without history, events published while this was read are only in the held
        # live events: keep them (the boundary stays at the resume point).
        return Replay(frames, complete, max(snap.seq, after) if history > 0 else after)

    # -- connections ---------------------------------------------------------------------

    async def claim_ip(self, session: Session) -> bool:
        client = self._require()
        ip_key = self._key("ip", session.ip)
        client_key = self._key("client", session.client_id)
        owner = f"{self.node}:{session.client_id}"
        exclusive = self.hub.limits.one_connection_per_ip
        # Recorded before asking: if the answer is lost (timeout, cancellation) the claim
        # may exist all the same, and release() must still delete it (it checks the owner).
        self._claims[session.client_id] = (ip_key, owner, client_key, exclusive)
        try:
            won = await client.eval(
                _CLAIM,
                keys=[ip_key, client_key],
                args=[
                    owner,
                    self._lease_ms,
                    self.node,
                    session.principal.name,
                    ",".join(session.subscriptions),
                    "1" if exclusive else "0",
                ],
            )
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise unavailable(_describe(exc)) from None
        if not won:
            del self._claims[session.client_id]  # someone else's: nothing to release
        return bool(won)

    def release(self, session: Session) -> None:
        claim = self._claims.pop(session.client_id, None)
        if claim is None:
            return
        try:
            self._releases_send.send_nowait(claim[:3])
        except trio.WouldBlock:
            self.releases_dropped += 1  # its lease expires on its own

    @property
    def _lease_ms(self) -> int:
        return int(self.settings.lease_seconds * 1000)

    async def _release_loop(self, client: coredis.Redis[bytes]) -> None:
        async for ip_key, owner, client_key in self._releases:
            await client.eval(_RELEASE, keys=[ip_key, client_key], args=[owner])

    async def _renew(self, client: coredis.Redis[bytes]) -> None:
        """Every lease/3: prove Redis still answers (a silent partition otherwise goes
        unnoticed on a node with nothing to publish), check it still holds this
        cluster's data, and renew the leases."""
        while True:
            await trio.sleep(self.settings.lease_seconds / 3)
            epoch = await client.get(self._key("epoch"))
            if epoch is None or _bytes(epoch).decode() != self._epoch_seen:
                raise coredis.exceptions.ConnectionError(
                    "Redis no longer holds this cluster's epoch (flushed or replaced)"
                )
            await self._reclaim(client)

    async def _reclaim(self, client: coredis.Redis[bytes]) -> None:
        """Renew every lease this node holds (and re-state each connection's channels)."""
        sessions = self.hub.sessions
        args: list[str | int] = [self._lease_ms, self.node]
        for client_id, (ip_key, owner, client_key, exclusive) in list(self._claims.items()):
            session = sessions.get(client_id)
            if session is None:
                continue
            args += [
                ip_key,
                owner,
                client_key,
                ",".join(session.subscriptions),
                session.principal.name,
                "1" if exclusive else "0",
            ]
        if len(args) > 2:
            await client.eval(_RENEW, keys=[], args=args)

    async def clients(self, client_ids: Iterable[str]) -> dict[str, RemoteClient]:
        wanted = [c for c in client_ids if c not in self.hub.sessions]
        if not wanted:
            return {}
        client = self._require()
        found: dict[str, RemoteClient] = {}
        try:
            for client_id in wanted:
                fields = await client.hgetall(self._key("client", client_id))
                if fields:
                    found[client_id] = _remote(client_id, fields)
        except _CONNECTION_ERRORS as exc:
            raise self._lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise unavailable(_describe(exc)) from None
        return found

    async def unsubscribe(
        self, principal: Principal, client_id: str, channels: list[str]
    ) -> UnsubscribeResult:
        hub = self.hub
        if client_id in hub.sessions:
            return hub.unsubscribe(principal, client_id, channels)
        requested = hub.unsubscribe_channels(channels)
        remote = (await self.clients([client_id])).get(client_id)
        if remote is None:
            raise unknown_client(client_id)
        check_owner(principal, remote.principal, client_id)
        removed = [c for c in requested if c != GLOBAL and c in remote.subscriptions]
        ignored = [c for c in requested if c not in removed]
        left = [c for c in remote.subscriptions if c not in removed]
        if removed:
            client = self._require()
            try:
                receivers = await client.publish(
                    self._key("control"), f"unsub\n{client_id}\n{','.join(removed)}"
                )
                if receivers:
                    await client.hset(self._key("client", client_id), {"subs": ",".join(left)})
            except _CONNECTION_ERRORS as exc:
                raise self._lost(exc) from None
            except coredis.exceptions.RedisError as exc:
                raise unavailable(_describe(exc)) from None
            if not receivers:
                # No node is listening (the one holding the client is reconnecting): the
                # command would be lost, so it is refused rather than answered 200.
                raise unavailable("the node holding this client is not reachable right now")
        return UnsubscribeResult(
            client_id=client_id, unsubscribed=removed, ignored=ignored, subscriptions=left
        )

    def _control(self, data: bytes) -> None:
        parts = data.decode(errors="replace").split("\n")
        if len(parts) == 3 and parts[0] == "unsub":
            session = self.hub.sessions.get(parts[1])
            if session is not None:
                # Authorised by the node that took the request.
                self.hub.unsubscribe(_CLUSTER, parts[1], parts[2].split(","))

    async def aclose(self) -> None:
        """Release this node's claims at once (a clean stop frees the IPs immediately):
        those of open connections and those of closed ones still queued for release.
        Best effort within 2 s; whatever is left expires with its lease."""
        pending = [claim[:3] for claim in self._claims.values()]
        self._claims.clear()
        while True:
            try:
                pending.append(self._releases.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        client = self._client
        if client is None or not pending:
            return
        with trio.move_on_after(2):
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for ip_key, owner, client_key in pending:
                        pipe.eval(_RELEASE, keys=[ip_key, client_key], args=[owner])
            except _REDIS_ERRORS as exc:
                log.warning("backplane: could not release claims at stop: %s", _describe(exc))


_CLUSTER = Principal(name="cluster", roles=frozenset({"admin"}), channels=None, kind="token")


@dataclass(frozen=True, slots=True)
class _Snapshot:
    seq: int  # the last seq numbered when it was read
    epoch: str
    entries: list[tuple[int, str, bytes, int]]  # (seq, channel, event JSON, time ms)
    evicted: dict[str, int]  # per channel, the newest seq trimmed from its stream


def _remote(client_id: str, fields: dict[bytes, bytes]) -> RemoteClient:
    subs = fields.get(b"subs", b"").decode()
    return RemoteClient(
        client_id=client_id,
        principal=fields.get(b"principal", b"").decode(),
        subscriptions=[c for c in subs.split(",") if c],
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()
    return url
