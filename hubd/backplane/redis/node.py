"""`RedisBackplane`: one node of a hubd cluster sharing one Redis. It composes the
connection (`connection.Link`), the leases (`leases.Leases`), the wire format (`wire`)
and the catch-up (`catchup`); see `hubd.backplane.redis` for what Redis holds."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable

import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from hubd.backplane.base import unavailable
from hubd.backplane.redis import catchup, scripts, wire
from hubd.backplane.redis.connection import (
    CONNECTION_ERRORS,
    LAG_CHECK,
    LagCutoff,
    Link,
    cluster_epoch,
    describe,
    lag_cutoff,
)
from hubd.backplane.redis.leases import Leases
from hubd.backplane.redis.options import client_options
from hubd.backplane.redis.outage import log_connected
from hubd.core.admission import check_owner, unknown_client
from hubd.core.auth import Principal
from hubd.core.errors import HubError
from hubd.core.history import Replay
from hubd.core.hub import Hub
from hubd.core.publishing import Checked, RemoteClient
from hubd.core.session import Session
from hubd.core.unsubscribe import UnsubscribeResult, requested_channels, unsubscribe
from hubd.protocol.channels import GLOBAL
from hubd.settings import BackplaneSettings

log = logging.getLogger("hubd.backplane")

_CLUSTER = Principal(name="cluster", roles=frozenset({"admin"}), channels=None, kind="token")


class RedisBackplane:
    """A node of a hubd cluster sharing one Redis. See `hubd.backplane.redis`."""

    def __init__(self, hub: Hub, settings: BackplaneSettings, node: str | None = None) -> None:
        self.hub = hub
        self.settings = settings
        self.node = node or random.getrandbits(64).to_bytes(8, "big").hex()
        self.prefix = settings.prefix
        self._link = Link(client_options(settings.url))
        self._leases = Leases(self.prefix, self.node, settings.lease_seconds)
        self._epoch_seen: str | None = None
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
        hub.history_elsewhere()  # history lives in Redis; the hub need not keep its own

    # -- state -------------------------------------------------------------------------

    @property
    def distributed(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._link.client is not None

    @property
    def status(self) -> str:
        return "redis: connected" if self.healthy else f"redis: unavailable ({self._link.why})"

    @property
    def errors(self) -> dict[str, int]:
        """Redis failures since start, by kind (`connection.ERROR_KINDS`)."""
        return dict(self._link.errors)

    @property
    def reconnects(self) -> int:
        """Connections to Redis made again after one was lost or failed, since start."""
        return self._link.reconnects

    @property
    def releases_dropped(self) -> int:
        """Releases that found the queue full since start (their leases expire)."""
        return self._leases.dropped

    async def wait_healthy(self) -> None:
        """Return once connected (at once if already)."""
        await self._link.wait_up()

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- the connection ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, listen and renew leases; on any connection failure, mark the backplane
        unavailable, log why and reconnect with exponential backoff and jitter. Reports
        started at once: a node serves its local subscribers even while Redis is down."""
        task_status.started()
        await self._link.run(self._serve)

    async def _serve(self, client: coredis.Redis[bytes]) -> None:
        await client.ping()
        epoch = await self._epoch(client)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    await self._listen(client, nursery, epoch)
                except BaseException as raised:
                    cutoff = lag_cutoff(raised)
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
        (raises) or this node falls more than `max_lag` events behind (`LagCutoff`).

        The subscription has a Redis client of its own: dropping it (leaving its context)
        closes its connection, and with it everything coredis buffered from the socket,
        while `client` keeps serving publishes and resumes."""
        events, control = self._key("events"), self._key("control")
        async with (
            self._link.open() as listener,
            listener.pubsub(channels=[events, control], retry_policy=NoRetryPolicy()) as pubsub,
            trio.open_nursery() as watching,
        ):
            # Subscribed: anything published from here on is buffered in `pubsub`.
            # Catch up from the streams first, so a lost subscription loses nothing.
            self._previous = 0
            await self._catch_up(client, watching)
            if self._link.up(client):  # the first subscription of this connection
                # Logged before anything awaits: whoever waited for the connection (the
                # daemon's `ready`) runs after this line.
                log_connected(self._link.last_outage, self.settings.url, self.node, epoch)
                await self._leases.reclaim(client, self.hub.sessions)
                nursery.start_soon(self._leases.renew_loop, client, epoch, self.hub.sessions)
                nursery.start_soon(self._leases.release_loop, client)
                nursery.start_soon(self._link.reset_on_request)
            events_b = events.encode()
            async for message in pubsub:
                if message["type"] != "message":
                    continue
                data = wire.as_bytes(message["data"])
                try:
                    if wire.as_bytes(message["channel"]) == events_b:
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
        delivered; more than `max_lag` behind raises `LagCutoff`. Idle, it asks nothing."""
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
                raise LagCutoff(behind, limit)

    async def _epoch(self, client: coredis.Redis[bytes]) -> str:
        """The cluster's epoch, adopted by the hub. On the first connection numbering
        starts from what Redis has numbered so far; a new epoch since the last one means
        Redis lost its data (restarted without persistence, flushed): numbering starts
        again and the old history is gone, and resumes from old ids say so."""
        epoch = await cluster_epoch(client, self._key("epoch"))
        seq: int | None = None
        if self._epoch_seen is None:
            current = await client.get(self._key("seq"))
            seq = int(current) if current else 0
        elif epoch != self._epoch_seen:
            log.warning(
                "backplane: Redis has a new epoch %s (was %s): its history was lost; "
                "events are numbered afresh",
                epoch,
                self._epoch_seen,
            )
            self._link.lost_data()
            self.hub.renumbered()
            self._renumbered = True
            self._caught_up = 0
        self._epoch_seen = epoch
        self.hub.adopt_numbering(epoch, seq)
        return epoch

    # -- events ------------------------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        """One event from the cluster (this node's own included) to local subscribers."""
        message = wire.parse_event(data)
        seq = message.seq
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
        catchup.deliver(self.hub, message)

    async def _catch_up(self, client: coredis.Redis[bytes], watching: trio.Nursery) -> None:
        """Deliver what the streams hold past the last event this node delivered (after a
        reconnect or a lag cutoff, or everything of a new epoch; on first connect there is
        nothing), and tell the subscribers that may have lost events what the streams no
        longer hold, ahead of what is delivered here. Once the streams are read, the lag
        is watched (in `watching`): a catch-up counts as being behind."""
        after = self.hub.last_seq
        snap = await self._snapshot(client, sorted(self.hub.channels), after)
        self._caught_up = snap.seq
        watching.start_soon(self._watch_lag, client)
        renumbered, self._renumbered = self._renumbered, False
        await catchup.catch_up(self.hub, snap, after, renumbered=renumbered)

    async def _snapshot(
        self, client: coredis.Redis[bytes], channels: list[str], after: int
    ) -> wire.Snapshot:
        return await catchup.snapshot(client, self.prefix, channels, after)

    async def publish(self, checked: list[Checked]) -> list[str]:
        client = self._link.require()
        hub = self.hub
        args = wire.publish_args(self.prefix, hub.epoch, hub.settings.history_size, checked)
        try:
            ids = await client.eval(scripts.PUBLISH, keys=[self._key("seq")], args=args)
        except CONNECTION_ERRORS as exc:
            # Sent, but no answer: Redis may have run it. Say so rather than "nothing
            # was accepted", so that a retry is a known risk of a duplicate.
            self._link.lost(exc)
            raise HubError(
                504,
                "publish_outcome_unknown",
                f"the event backplane did not answer ({describe(exc)}); the events may or "
                "may not have been published: check before retrying, or retry and tolerate "
                "a duplicate",
            ) from None
        except coredis.exceptions.RedisError as exc:
            if "HUBD_EPOCH" in str(exc):
                self._link.reset.set()  # reconnect: the session starts a new epoch
                raise unavailable("Redis lost its data; reconnecting") from None
            # Out of memory, read-only replica, ...: nothing was published.
            raise self._link.refused(exc) from None
        return wire.published_ids(ids)

    async def replay(self, channels: list[str], since: str) -> Replay:
        client = self._link.require()
        after = self.hub.parse_since(since)
        if after is None:
            return Replay([], False)
        try:
            snap = await self._snapshot(client, channels, after)
        except CONNECTION_ERRORS as exc:
            raise self._link.lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise self._link.refused(exc) from None
        if snap.epoch != self.hub.epoch:
            self._link.reset.set()  # Redis lost its data meanwhile: reconnect into the new epoch
            return Replay([], False, after)
        return catchup.replay_from(self.hub, snap, after)

    # -- connections ---------------------------------------------------------------------

    async def claim_ip(self, session: Session) -> bool:
        client = self._link.require()
        try:
            return await self._leases.claim(client, session, self.hub.limits.one_connection_per_ip)
        except CONNECTION_ERRORS as exc:
            raise self._link.lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise self._link.refused(exc) from None

    def release(self, session: Session) -> None:
        self._leases.release(session)

    async def clients(self, client_ids: Iterable[str]) -> dict[str, RemoteClient]:
        wanted = [c for c in client_ids if c not in self.hub.sessions]
        if not wanted:
            return {}
        client = self._link.require()
        found: dict[str, RemoteClient] = {}
        try:
            for client_id in wanted:
                fields = await client.hgetall(self._key("client", client_id))
                if fields:
                    found[client_id] = wire.remote_client(client_id, fields)
        except CONNECTION_ERRORS as exc:
            raise self._link.lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise self._link.refused(exc) from None
        return found

    async def unsubscribe(
        self, principal: Principal, client_id: str, channels: list[str]
    ) -> UnsubscribeResult:
        hub = self.hub
        if client_id in hub.sessions:
            return unsubscribe(hub, principal, client_id, channels)
        requested = requested_channels(hub, channels)
        remote = (await self.clients([client_id])).get(client_id)
        if remote is None:
            raise unknown_client(client_id)
        check_owner(principal, remote.principal, client_id)
        removed = [c for c in requested if c != GLOBAL and c in remote.subscriptions]
        ignored = [c for c in requested if c not in removed]
        left = [c for c in remote.subscriptions if c not in removed]
        if removed:
            await self._unsubscribe_remote(client_id, removed, left)
        return UnsubscribeResult(
            client_id=client_id, unsubscribed=removed, ignored=ignored, subscriptions=left
        )

    async def _unsubscribe_remote(
        self, client_id: str, removed: list[str], left: list[str]
    ) -> None:
        """Ask the node holding `client_id` to drop `removed` (503 if none listens)."""
        client = self._link.require()
        try:
            receivers = await client.publish(
                self._key("control"), wire.unsubscribe_command(client_id, removed)
            )
            if receivers:
                await client.hset(self._key("client", client_id), {"subs": ",".join(left)})
        except CONNECTION_ERRORS as exc:
            raise self._link.lost(exc) from None
        except coredis.exceptions.RedisError as exc:
            raise self._link.refused(exc) from None
        if not receivers:
            # No node is listening (the one holding the client is reconnecting): the
            # command would be lost, so it is refused rather than answered 200.
            raise unavailable("the node holding this client is not reachable right now")

    def _control(self, data: bytes) -> None:
        command = wire.parse_control(data)
        if command is not None and command[0] in self.hub.sessions:
            # Authorised by the node that took the request.
            unsubscribe(self.hub, _CLUSTER, command[0], command[1])

    async def aclose(self) -> None:
        """Release this node's claims at once (a clean stop frees the IPs immediately):
        those of open connections and those of closed ones still queued for release.
        Best effort within 2 s; whatever is left expires with its lease."""
        await self._leases.release_all(self._link.client)
