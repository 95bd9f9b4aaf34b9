"""Which node holds which client IP and connection: leases in Redis (`<p>:ip:<ip>`,
`<p>:client:<client_id>`) that the node claims at admission, renews every
`lease_seconds / 3` and releases when the connection ends (or lets expire)."""

from __future__ import annotations

import logging

import coredis
import coredis.exceptions
import trio

from hubd.backplane.redis import scripts
from hubd.backplane.redis.connection import REDIS_ERRORS, DataLost, describe
from hubd.backplane.redis.wire import as_bytes
from hubd.core.session import Session

log = logging.getLogger("hubd.backplane")

RELEASE_QUEUE = 10_000


class Leases:
    """This node's claims: one per subscriber, made through `claim`, renewed by
    `renew_loop`, given up through `release` (sent by `release_loop`) or `release_all`."""

    def __init__(self, prefix: str, node: str, lease_seconds: float) -> None:
        self.prefix = prefix
        self.node = node
        self.lease_seconds = lease_seconds
        self._releases_send, self._releases = trio.open_memory_channel[tuple[str, str, str]](
            RELEASE_QUEUE
        )
        self.dropped = 0  # releases that found the queue full (their lease expires)
        # Every subscriber's claim: client_id -> (ip key, owner value, client key, exclusive).
        self._claims: dict[str, tuple[str, str, str, bool]] = {}

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def claim(self, client: coredis.Redis[bytes], session: Session, exclusive: bool) -> bool:
        """Record `session` cluster-wide; False when `exclusive` and another connection
        holds its IP. Raises what the client raises."""
        ip_key = self._key("ip", session.ip)
        client_key = self._key("client", session.client_id)
        owner = f"{self.node}:{session.client_id}"
        # Recorded before asking: if the answer is lost (timeout, cancellation) the claim
        # may exist all the same, and release() must still delete it (it checks the owner).
        self._claims[session.client_id] = (ip_key, owner, client_key, exclusive)
        won = await client.eval(
            scripts.CLAIM,
            keys=[ip_key, client_key],
            args=[
                owner,
                self.lease_ms,
                self.node,
                session.principal.name,
                ",".join(session.subscriptions),
                "1" if exclusive else "0",
            ],
        )
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
            self.dropped += 1  # its lease expires on its own

    async def release_loop(self, client: coredis.Redis[bytes]) -> None:
        async for ip_key, owner, client_key in self._releases:
            await client.eval(scripts.RELEASE, keys=[ip_key, client_key], args=[owner])

    async def renew_loop(
        self, client: coredis.Redis[bytes], epoch: str, sessions: dict[str, Session]
    ) -> None:
        """Every lease/3: prove Redis still answers (a silent partition otherwise goes
        unnoticed on a node with nothing to publish), check it still holds this
        cluster's data (`epoch`), and renew the leases."""
        while True:
            await trio.sleep(self.lease_seconds / 3)
            value = await client.get(self._key("epoch"))
            if value is None or as_bytes(value).decode() != epoch:
                raise DataLost("Redis no longer holds this cluster's epoch (flushed or replaced)")
            await self.reclaim(client, sessions)

    async def reclaim(self, client: coredis.Redis[bytes], sessions: dict[str, Session]) -> None:
        """Renew every lease this node holds (and re-state each connection's channels)."""
        args: list[str | int] = [self.lease_ms, self.node]
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
            await client.eval(scripts.RENEW, keys=[], args=args)

    async def release_all(self, client: coredis.Redis[bytes] | None) -> None:
        """Release every claim at once (a clean stop frees the IPs immediately): those of
        open connections and those of closed ones still queued for release. Best effort
        within 2 s; whatever is left expires with its lease."""
        pending = [claim[:3] for claim in self._claims.values()]
        self._claims.clear()
        while True:
            try:
                pending.append(self._releases.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if client is None or not pending:
            return
        with trio.move_on_after(2):
            try:
                async with client.pipeline(transaction=False) as pipe:
                    for ip_key, owner, client_key in pending:
                        pipe.eval(scripts.RELEASE, keys=[ip_key, client_key], args=[owner])
            except REDIS_ERRORS as exc:
                log.warning("backplane: could not release claims at stop: %s", describe(exc))
