"""What every backplane offers the web layer, and the two steps that use it.

`publish_through` and `join` are how the web layer publishes and admits subscribers:
with a distributed backplane they need round trips to the other nodes (targets, IP
claims, the replay of a resume) before the hub is touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import trio

from hubd.core.admission import check_since
from hubd.core.auth import Principal
from hubd.core.errors import HubError
from hubd.core.history import Replay
from hubd.core.hub import Hub
from hubd.core.publishing import (
    Checked,
    PublishResult,
    RemoteClient,
    check_request,
    decode_request,
    publish_request,
)
from hubd.core.session import Session
from hubd.core.unsubscribe import UnsubscribeResult


async def publish_through(
    backplane: Backplane, principal: Principal, payload: bytes
) -> PublishResult:
    """A whole publish request: decode, check everything (targets may live on other
    nodes), then publish all events or none."""
    hub = backplane.hub
    if not backplane.distributed:
        return publish_request(hub, principal, payload)  # no await: nothing to wait for
    events, batch = decode_request(payload)
    targets = {e.client_id for e in events if e.client_id is not None}
    remote = await backplane.clients(targets) if targets else {}
    checked = check_request(hub, principal, events, batch, remote)
    return PublishResult(await backplane.publish(checked), batch)


async def join(
    backplane: Backplane,
    principal: Principal,
    ip: str,
    event_types: str | None,
    *,
    batch: bool = False,
    since: str | None = None,
) -> Session:
    """Admit a subscriber on this node and, with a distributed backplane, in the cluster:
    its IP is claimed cluster-wide (409 when another node holds it) and a resume is
    replayed from the backplane's history while live events for it are held back.
    Raises `HubError`; on failure nothing stays registered."""
    hub = backplane.hub
    if not backplane.distributed:
        return hub.admit(principal, ip, event_types, batch=batch, since=since)
    if since is not None:
        check_since(since)
    session = hub.admit(principal, ip, event_types, batch=batch)
    if since is not None:
        # Before any await: from here, live events for it are held until the replay is in.
        hub.begin_resume(session)
    try:
        if not await backplane.claim_ip(session):
            raise HubError(
                409,
                "ip_in_use",
                f"client IP {ip} already has an open connection on another node; one "
                "connection per IP is allowed (close it first)",
            )
        if since is not None:
            # A copy: an unsubscribe during the awaits must not change what is read.
            replay = await backplane.replay(list(session.subscriptions), since)
            upto = max(replay.upto, replay.frames[-1].seq if replay.frames else 0)
            hub.finish_resume(session, replay.frames, replay.complete, upto)
    except BaseException:
        hub.unregister(session, refused=True)
        backplane.release(session)
        raise
    return session


def unavailable(why: str) -> HubError:
    """503 for work that needs the backplane while it is unreachable."""
    return HubError(
        503,
        "backplane_unavailable",
        f"the event backplane is unavailable ({why}); nothing was accepted, retry shortly",
    )


class Backplane(Protocol):
    hub: Hub

    @property
    def distributed(self) -> bool:
        """True when other nodes share this hub's events (admission and replay then
        need a round trip)."""

    @property
    def healthy(self) -> bool:
        """False while the backplane cannot be reached: publishes and new subscribers
        get 503 and the node reports not ready."""

    @property
    def status(self) -> str:
        """One line saying what the backplane is doing (for logs and readiness)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the backplane connected and deliver other nodes' events into the hub."""

    async def wait_healthy(self) -> None:
        """Return once the backplane is reachable (at once if it is): the daemon reports
        ready only then."""

    async def publish(self, checked: list[Checked]) -> list[str]:
        """Publish checked events to every node; returns their ids in order."""

    async def clients(self, client_ids: Iterable[str]) -> dict[str, RemoteClient]:
        """The given clients that are connected to other nodes."""

    async def claim_ip(self, session: Session) -> bool:
        """Record `session` cluster-wide; False if its IP has a connection on another node."""

    def release(self, session: Session) -> None:
        """Forget a session cluster-wide (best effort: leases expire anyway)."""

    async def replay(self, channels: list[str], since: str) -> Replay:
        """What a client resuming from event `since` missed on `channels`."""

    async def unsubscribe(
        self, principal: Principal, client_id: str, channels: list[str]
    ) -> UnsubscribeResult:
        """Unsubscribe a client wherever it is connected."""

    async def aclose(self) -> None:
        """Release what the backplane holds (connections, leases)."""
