"""HubClient.subscribe against a scripted WebSocket server over in-memory streams, in
virtual time: a frame over the client's size limit, a large frame arriving slowly, a
silent connection, 409 ip_in_use after a drop, and notices with garbled fields."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from hubd.client import (
    ConflictError,
    Connected,
    Credentials,
    Gap,
    HubClient,
    Notice,
    ProtocolError,
    Reconnecting,
    Resumed,
    Unsubscribed,
)
from hubd.client import connection as client_connection
from hubd.protocol.notices import CONFIRMATION

URL = "http://hub.test:8080"
CREDENTIALS = Credentials(token="t")
# Virtual seconds: only reached when something is broken.
GUARD = 3600.0
EVENT_ID = "ab" * 32

Handler = Callable[[WebSocketRequest, "Link", int], Awaitable[None]]


class Link(trio.abc.Stream):
    """The server's end of one connection; `slow` sends in 4 KiB pieces, one a second."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.slow = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.slow:
            await self.inner.send_all(data)
            return
        view = memoryview(data)
        while view:
            await self.inner.send_all(view[:4096])
            view = view[4096:]
            await trio.sleep(1.0)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class FakeHub:
    """Stands in for TCP: each connection attempt gets an in-memory stream whose other
    end `handler(request, link, attempt)` serves (attempts count from 1)."""

    def __init__(self, nursery: trio.Nursery, handler: Handler) -> None:
        self.nursery = nursery
        self.handler = handler
        self.dials = 0
        self.queries: list[str] = []

    async def open_stream(self, *args: Any) -> trio.abc.Stream:
        client_end, server_end = trio.testing.memory_stream_pair()
        self.dials += 1
        self.nursery.start_soon(self._serve, Link(server_end), self.dials)
        return client_end

    async def _serve(self, link: Link, attempt: int) -> None:
        try:
            request = await trio_websocket.wrap_server_stream(
                self.nursery, link, max_message_size=2**30
            )
            self.queries.append(request.path)
            await self.handler(request, link, attempt)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


@pytest.fixture
def fake_hub(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Handler], FakeHub]:
    def install(handler: Handler) -> FakeHub:
        hub = FakeHub(nursery, handler)
        monkeypatch.setattr(client_connection, "_open_stream", hub.open_stream)
        return hub

    return install


def frame(value: dict[str, Any]) -> str:
    return json.dumps(value)


def confirmation(client_id: str = "c1") -> str:
    body = {"client_id": client_id, "subscriptions": ["pdfm", "health", "global"]}
    return frame({"event_type": "global", "message": CONFIRMATION, "body": body})


def event(n: int, body: Any = None) -> str:
    return frame(
        {
            "id": f"{n:064x}",
            "event_type": "pdfm",
            "timestamp": "2026-11-28T14:35:03.600288Z",
            "message": f"E{n}",
            "body": body,
        }
    )


def notice(message: str, body: Any) -> str:
    return frame({"event_type": "global", "client_id": "c1", "message": message, "body": body})


async def drain(ws: WebSocketConnection) -> None:
    """Read (and ignore) the client's frames until it closes."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        pass


async def accept(request: WebSocketRequest, client_id: str = "c1") -> WebSocketConnection:
    ws = await request.accept()
    await ws.send_message(confirmation(client_id))
    return ws


# -- frame size ----------------------------------------------------------------------------


async def test_a_frame_over_max_message_size_ends_the_subscription(
    fake_hub: Callable[[Handler], FakeHub], autojump_clock: trio.testing.MockClock
) -> None:
    """The client closes with 1009 itself; a resume would bring the same frame again, so
    it raises instead of reconnecting for ever."""

    async def handler(request: WebSocketRequest, link: Link, attempt: int) -> None:
        ws = await accept(request)
        await ws.send_message(event(1, {"pad": "x" * 4096}))
        await drain(ws)

    hub = fake_hub(handler)
    client = HubClient(URL, CREDENTIALS, max_message_size=1024)
    with trio.fail_after(GUARD), pytest.raises(ProtocolError, match="max_message_size"):
        async with client.subscribe("pdfm") as events:
            async for _ in events:
                pass
    assert hub.dials == 1


async def test_a_large_frame_arriving_slowly_is_not_a_dead_connection(
    fake_hub: Callable[[Handler], FakeHub], autojump_clock: trio.testing.MockClock
) -> None:
    """200 kB at 4 kB a second take 50 s, well past 2 x heartbeat + 1 = 3 s without a
    whole frame; bytes keep coming, so the connection is alive."""

    async def handler(request: WebSocketRequest, link: Link, attempt: int) -> None:
        ws = await accept(request)
        link.slow = True
        await ws.send_message(event(1, {"pad": "x" * 200_000}))
        link.slow = False
        await drain(ws)

    hub = fake_hub(handler)
    notices: list[Notice] = []
    client = HubClient(URL, CREDENTIALS)
    with trio.fail_after(GUARD):
        async with client.subscribe("pdfm", heartbeat=1.0, on_notice=notices.append) as events:
            start = trio.current_time()
            got = await anext(aiter(events))
            assert trio.current_time() - start > 40
    assert len(got.body["pad"]) == 200_000
    assert hub.dials == 1
    assert not [n for n in notices if isinstance(n, Reconnecting)]


async def test_a_silent_connection_is_dead_after_dead_after_seconds(
    fake_hub: Callable[[Handler], FakeHub], autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: WebSocketRequest, link: Link, attempt: int) -> None:
        ws = await accept(request, f"c{attempt}")
        if attempt == 1:
            await drain(ws)  # never answers a ping
        else:
            await ws.send_message(event(1))
            await drain(ws)

    hub = fake_hub(handler)
    lost_at: list[float] = []

    def on_notice(notice: Notice) -> None:
        if isinstance(notice, Reconnecting):
            lost_at.append(trio.current_time())

    client = HubClient(URL, CREDENTIALS)
    with trio.fail_after(GUARD):
        async with client.subscribe(
            "pdfm", heartbeat=1.0, dead_after=7.0, on_notice=on_notice
        ) as events:
            start = trio.current_time()
            got = await anext(aiter(events))
    assert got.message == "E1"
    assert hub.dials == 2
    assert lost_at[0] - start == pytest.approx(7.0, abs=0.01)


# -- 409 ip_in_use after a drop ------------------------------------------------------------


def conflict_hub(busy_for: float) -> tuple[Handler, list[float]]:
    """First connection dropped at once (1001); then 409 ip_in_use for `busy_for`
    seconds; then admitted with one event."""
    dropped: list[float] = []

    async def handler(request: WebSocketRequest, link: Link, attempt: int) -> None:
        if attempt == 1:
            ws = await accept(request)
            dropped.append(trio.current_time())
            await ws.aclose(1001)
            return
        if trio.current_time() - dropped[0] < busy_for:
            body = {"error": "ip_in_use", "message": "a connection from 127.0.0.1 is open"}
            await request.reject(409, body=json.dumps(body).encode())
            return
        ws = await accept(request, "c2")
        await ws.send_message(event(1))
        await drain(ws)

    return handler, dropped


async def test_ip_in_use_after_a_drop_is_retried_while_reconnecting_by_default(
    fake_hub: Callable[[Handler], FakeHub], autojump_clock: trio.testing.MockClock
) -> None:
    handler, dropped = conflict_hub(busy_for=300.0)  # longer than any fixed window
    hub = fake_hub(handler)
    notices: list[Notice] = []
    client = HubClient(URL, CREDENTIALS)
    with trio.fail_after(GUARD):
        async with client.subscribe("pdfm", on_notice=notices.append) as events:
            got = await anext(aiter(events))
            assert trio.current_time() - dropped[0] >= 300.0
    assert got.message == "E1"
    assert hub.dials > 3
    assert any(isinstance(n, Reconnecting) and "409 ip_in_use" in n.cause for n in notices)
    assert Connected("c2", ("pdfm", "health", "global"), None, 1) in notices


async def test_ip_in_use_is_final_after_conflict_window(
    fake_hub: Callable[[Handler], FakeHub], autojump_clock: trio.testing.MockClock
) -> None:
    handler, dropped = conflict_hub(busy_for=300.0)
    fake_hub(handler)
    client = HubClient(URL, CREDENTIALS)
    with trio.fail_after(GUARD), pytest.raises(ConflictError) as info:
        async with client.subscribe("pdfm", conflict_window=20.0) as events:
            async for _ in events:
                pass
    assert info.value.code == "ip_in_use"
    assert 20.0 <= trio.current_time() - dropped[0] < 300.0


# -- notices with garbled fields -----------------------------------------------------------


async def test_garbled_notice_fields_do_not_end_the_subscription(
    fake_hub: Callable[[Handler], FakeHub], autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: WebSocketRequest, link: Link, attempt: int) -> None:
        ws = await accept(request)
        await ws.send_message(notice("replay_complete", {"replayed": "lots", "complete": True}))
        await ws.send_message(notice("events_dropped", {"dropped": None}))
        await ws.send_message(notice("events_dropped", {"dropped": "1e999"}))
        await ws.send_message(notice("unsubscribed", {"subscriptions": 5, "unsubscribed": 7}))
        await ws.send_message(event(1))
        await drain(ws)

    fake_hub(handler)
    notices: list[Notice] = []
    client = HubClient(URL, CREDENTIALS)
    with trio.fail_after(GUARD):
        async with client.subscribe("pdfm", since=EVENT_ID, on_notice=notices.append) as events:
            got = await anext(aiter(events))
            assert events.subscriptions == ("pdfm", "health", "global")  # kept
    assert got.message == "E1"
    assert Resumed(EVENT_ID, 0) in notices
    assert notices.count(Gap("dropped_by_server", EVENT_ID, dropped=0)) == 2
    assert Unsubscribed((), ("pdfm", "health", "global")) in notices
