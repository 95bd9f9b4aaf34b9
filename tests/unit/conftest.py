"""Small factories shared by the unit tests: settings from TOML text, principals, hubs,
and an in-memory subscriber connection driven over `MemoryTransport`."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from hubd.core.auth import Principal
from hubd.core.hub import Hub
from hubd.core.serving import serve_session
from hubd.core.session import Session
from hubd.core.transport import Closed, MemoryTransport
from hubd.settings import HubSettings, Settings, load_settings_text

# One credential, so that a config fragment under test is not refused for having none.
CREDENTIALS = """
[[auth.tokens]]
name = "alice"
token = "alice-token"
roles = ["subscriber"]
"""


def make_settings(text: str = "", *, credentials: bool = True) -> Settings:
    """Settings from a TOML fragment (dedented), plus one token unless told otherwise."""
    return load_settings_text(textwrap.dedent(text) + (CREDENTIALS if credentials else ""))


def principal(
    name: str = "alice",
    roles: Iterable[str] = ("subscriber",),
    channels: Iterable[str] | None = None,
) -> Principal:
    return Principal(
        name=name,
        roles=frozenset(roles),
        channels=None if channels is None else frozenset(channels),
        kind="token",
    )


SUBSCRIBER = principal("alice", ["subscriber"])
PUBLISHER = principal("vm-monitor", ["publisher"])
ADMIN = principal("root", ["admin"])

_HUB_KEYS = frozenset(f.name for f in msgspec.structs.fields(HubSettings))


def make_hub(clock: Callable[[], float] | None = None, **options: Any) -> Hub:
    """A hub whose [hub] / [limits] keys are given as keyword arguments (validated as in a
    config file). Without `clock` it reads trio's, so it must be made inside a trio run."""
    hub = {k: v for k, v in options.items() if k in _HUB_KEYS}
    limits = {k: v for k, v in options.items() if k not in _HUB_KEYS}
    settings = msgspec.convert({"hub": hub, "limits": limits}, Settings)
    if clock is None:
        return Hub(settings.hub, settings.limits)
    return Hub(settings.hub, settings.limits, clock)


_next_ip = iter(range(1, 1_000_000))


def fresh_ip() -> str:
    n = next(_next_ip)
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def admit(
    hub: Hub,
    who: Principal = SUBSCRIBER,
    event_types: str | None = None,
    ip: str | None = None,
) -> Session:
    return hub.admit(who, ip or fresh_ip(), event_types)


async def queued(session: Session) -> list[dict[str, Any]]:
    """Everything sitting in a session's mailbox, decoded, without waiting."""
    n = len(session.mailbox)
    if not n:
        return []
    return [json.loads(frame.payload) for frame in session.mailbox.take(n)]


def publish_body(*events: dict[str, Any], batch: bool = False) -> bytes:
    """A publish request body: one event object, or an array when `batch` (or several)."""
    if batch or len(events) != 1:
        return json.dumps(list(events)).encode()
    return json.dumps(events[0]).encode()


# Upper bound on any wait in a session test, so that a broken rule fails instead of hanging
# (virtual seconds under `autojump_clock`: costs nothing when all is well).
GUARD = 600.0


@dataclass
class Client:
    """The client end of one session served by `serve_session` over a `MemoryTransport`."""

    hub: Hub
    session: Session
    transport: MemoryTransport
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def client_id(self) -> str:
        return self.session.client_id

    async def send(self, frame: str | bytes | dict[str, Any]) -> None:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        await self.transport.from_client.send(frame)

    async def next_item(self) -> str | Closed:
        with trio.fail_after(GUARD):
            return await self.transport.to_client.receive()

    async def receive(self) -> dict[str, Any]:
        """The next server frame, decoded; fails if the connection was closed instead."""
        frame: dict[str, Any] = json.loads(await self.receive_raw())
        return frame

    async def receive_raw(self) -> str:
        item = await self.next_item()
        assert isinstance(item, str), f"expected a frame, got {item!r}"
        return item

    async def expect_close(self) -> Closed:
        """The next item must be the close; the session must then end."""
        item = await self.next_item()
        assert isinstance(item, Closed), f"expected the close, got frame {item!r}"
        await self.ended()
        return item

    async def ended(self) -> None:
        """Wait until `serve_session` has returned."""
        with trio.fail_after(GUARD):
            await self.done.wait()

    async def hang_up(self) -> None:
        """The client goes away (the server's receive returns None)."""
        await self.transport.from_client.aclose()


class StalledTransport(MemoryTransport):
    """A client whose socket stops draining after `stall()`: the server's sends block, as
    on a full TCP window, until `resume()`."""

    def __init__(self) -> None:
        super().__init__()
        self._flowing = trio.Event()
        self._flowing.set()

    def stall(self) -> None:
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    async def send(self, text: str) -> None:
        await self._flowing.wait()
        await super().send(text)


async def serve(
    nursery: trio.Nursery, hub: Hub, session: Session, transport: MemoryTransport | None = None
) -> Client:
    """Serve an admitted session in `nursery` and return its client end."""
    client = Client(hub, session, transport or MemoryTransport())

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_session(hub, session, client.transport, task_status=task_status)
        finally:
            client.done.set()

    await nursery.start(run)
    return client


async def connect(
    nursery: trio.Nursery,
    hub: Hub,
    who: Principal = SUBSCRIBER,
    event_types: str | None = None,
    ip: str | None = None,
    *,
    read_confirmation: bool = True,
    transport: MemoryTransport | None = None,
) -> Client:
    """Admit a subscriber and serve it in `nursery`; by default the confirmation frame has
    already been read when this returns."""
    client = await serve(nursery, hub, admit(hub, who, event_types, ip), transport)
    if read_confirmation:
        confirmation = await client.receive()
        assert confirmation["message"].startswith("WebSocket connection established")
    return client
