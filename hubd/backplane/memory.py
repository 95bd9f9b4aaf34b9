"""The default backplane: one node, where the hub is the whole cluster."""

from __future__ import annotations

from collections.abc import Iterable

import trio

from hubd.core.auth import Principal
from hubd.core.history import Replay
from hubd.core.hub import Hub
from hubd.core.publishing import Checked, RemoteClient, publish_checked
from hubd.core.session import Session
from hubd.core.unsubscribe import UnsubscribeResult, unsubscribe


class MemoryBackplane:
    """A single node: the hub is the whole cluster."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @property
    def distributed(self) -> bool:
        return False

    @property
    def healthy(self) -> bool:
        return True

    @property
    def status(self) -> str:
        return "memory"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def wait_healthy(self) -> None:
        pass  # always reachable

    async def publish(self, checked: list[Checked]) -> list[str]:
        return publish_checked(self.hub, checked)

    async def clients(self, client_ids: Iterable[str]) -> dict[str, RemoteClient]:
        return {}

    async def claim_ip(self, session: Session) -> bool:
        return True  # Hub.admit already enforced it: this node is the only one

    def release(self, session: Session) -> None:
        pass

    async def replay(self, channels: list[str], since: str) -> Replay:
        return self.hub.replay(channels, since)

    async def unsubscribe(
        self, principal: Principal, client_id: str, channels: list[str]
    ) -> UnsubscribeResult:
        return unsubscribe(self.hub, principal, client_id, channels)

    async def aclose(self) -> None:
        pass
