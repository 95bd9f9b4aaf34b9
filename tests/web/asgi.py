"""hubd's web layer in process: the ASGI app built as `hubd serve` builds it, HTTP through
httpx's ASGI transport and WebSockets through a fake ASGI server connection.

- `InProcessHubd` / `build_hubd(**sections)`: a `HubdApp` over a fresh hub, wired as
  `hubd.service.run` wires it, from the same config the end-to-end tests render.
- `FakeWebSocket`: one ASGI WebSocket connection. `websocket.connect` / `websocket.receive`
  / `websocket.disconnect` go in; `websocket.accept` / `websocket.send` / `websocket.close`
  and `websocket.http.response.*` (a refused handshake) come out. Its `send` is not
  Hypercorn's, so the connection takes the plain ASGI transport (`hubd.web.asgi_transport`).
- `Subscriber`: a connected subscriber whose confirmation has been read, with the same
  methods as the end-to-end one (`recv`, `send`, `request`, `until`, `closed`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from hubd.core.hub import Hub
from hubd.service import build_app
from hubd.settings import Settings, load_settings_text
from hubd.web.app import HubdApp
from hubd.web.context import WebContext

from ..helpers import (
    CONFIRMATION_MESSAGE,
    SUB,
    SubscriberBase,
    config_for,
    error_object,
    render_config,
    subscribe_path,
    unwrap_group,
)

# Generous: everything in process takes microseconds; only hit when something is broken.
WAIT = 5.0
BASE_URL = "http://hubd.test"
HOST = "hubd.test"

Message = dict[str, Any]

_client_numbers = itertools.count(1)


def client_ip() -> str:
    """A client address no other connection in this process has used."""
    n = next(_client_numbers)
    return f"10.20.{n // 250 % 250}.{n % 250 + 1}"


def settings_for(**sections: Mapping[str, Any]) -> Settings:
    """Settings from the end-to-end base config (every test credential) plus `sections`,
    through the same TOML loader `hubd serve` uses."""
    return load_settings_text(render_config(config_for(**sections)), "<test config>")


# -- the app -------------------------------------------------------------------------------


@dataclass
class InProcessHubd:
    ctx: WebContext
    app: HubdApp

    @property
    def hub(self) -> Hub:
        return self.ctx.hub

    @asynccontextmanager
    async def http(
        self, ip: str | None = None, base_url: str = BASE_URL
    ) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=self.app, client=(ip or client_ip(), 40000))
        async with httpx.AsyncClient(
            transport=transport, base_url=base_url, timeout=WAIT
        ) as client:
            yield client

    @asynccontextmanager
    async def websocket(
        self,
        path: str = "/v1/ws/subscribe",
        headers: Mapping[str, str] | None = None,
        *,
        ip: str | None = None,
        server: tuple[str, int] = (HOST, 80),
    ) -> AsyncIterator[FakeWebSocket]:
        """An accepted WebSocket; a refused handshake raises `Rejected`."""
        ws = FakeWebSocket(self.app, ip or client_ip(), server)
        try:
            async with trio.open_nursery() as nursery:
                try:
                    await ws.connect(nursery, path, headers)
                    yield ws
                finally:
                    await ws.aclose()
        except BaseExceptionGroup as group:
            raise unwrap_group(group) from None

    async def rejected(
        self,
        path: str = "/v1/ws/subscribe",
        headers: Mapping[str, str] | None = None,
        *,
        ip: str | None = None,
        server: tuple[str, int] = (HOST, 80),
    ) -> Rejected:
        """A handshake the server must refuse before the upgrade."""
        try:
            async with self.websocket(path, headers, ip=ip, server=server):
                pass
        except Rejected as exc:
            return exc
        raise AssertionError(f"the handshake to {path} was accepted")

    @asynccontextmanager
    async def subscribe(
        self,
        channels: str | Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        ip: str | None = None,
        prefix: str = "/v1",
        access_token: str | None = None,
        query: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Subscriber]:
        """Connect (as `sub` unless told otherwise) and read the confirmation frame."""
        if headers is None and access_token is None:
            headers = SUB
        path = subscribe_path(channels, prefix=prefix, access_token=access_token, query=query)
        async with self.websocket(path, headers, ip=ip) as ws:
            sub = Subscriber(ws)
            sub.confirmation = await sub.recv()
            assert sub.confirmation["message"] == CONFIRMATION_MESSAGE, sub.confirmation
            yield sub


def build_hubd(settings: Settings, *, ready: bool = True) -> InProcessHubd:
    """A `HubdApp` wired by `hubd.service.build_app`, as `run` serves it, marked ready as
    once every listener serves. Call inside trio. What `run` adds around it (listeners,
    Hypercorn, signals, drain, history file) is not here. `MemoryBackplane.run` only
    parks, so it is not started."""
    ctx, app = build_app(settings)
    ctx.ready = ready
    return InProcessHubd(ctx, app)


# -- the fake WebSocket --------------------------------------------------------------------


class Rejected(Exception):
    """The handshake was answered with a plain HTTP response instead of an accept."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"{status} {body!r}")
        self.status = status
        self.headers = headers
        self.body = body

    def error(self, status: int) -> dict[str, str]:
        """Check the status and the JSON `{"error", "message"}` body; return the body."""
        assert self.status == status, (self.status, self.body)
        assert self.headers.get("content-type") == "application/json", self.headers
        assert self.headers.get("content-length") == str(len(self.body)), self.headers
        return error_object(json.loads(self.body))


@dataclass
class Closed:
    code: int
    reason: str
    # Text frames the server sent before its close frame, in order.
    frames: list[str] = field(default_factory=list)


class FakeWebSocket:
    """The server side of one ASGI WebSocket connection, driven by the test."""

    def __init__(self, app: HubdApp, ip: str, server: tuple[str, int]) -> None:
        self.app = app
        self.ip = ip
        self.server = server
        self._in_send, self._in_recv = trio.open_memory_channel[Message](math.inf)
        self._out_send, self._out_recv = trio.open_memory_channel[Message](math.inf)
        self.app_done = trio.Event()
        self.accepted = False
        self.server_closed: Message | None = None
        self.client_closed = False

    # The ASGI callables handed to the app.

    async def asgi_receive(self) -> Message:
        try:
            return await self._in_recv.receive()
        except trio.EndOfChannel:
            return {"type": "websocket.disconnect", "code": 1006}

    async def asgi_send(self, message: Message) -> None:
        kind = message["type"]
        if self.server_closed is not None or self.client_closed:
            if kind in ("websocket.send", "websocket.close"):
                # What a server does with a send on a closed connection.
                raise trio.ClosedResourceError("the WebSocket is closed")
            raise AssertionError(f"{kind} sent after the connection closed: {message}")
        if kind == "websocket.close":
            self.server_closed = message
            # A server answers the app's close with the disconnect (close handshake done).
            self._in_send.send_nowait(
                {"type": "websocket.disconnect", "code": message.get("code", 1000)}
            )
        await self._out_send.send(message)

    # The test's side.

    async def connect(
        self, nursery: trio.Nursery, path: str, headers: Mapping[str, str] | None
    ) -> None:
        raw_path, _, query = path.partition("?")
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": self.server,
            "client": (self.ip, 50000),
            "root_path": "",
            "path": raw_path,
            "raw_path": raw_path.encode(),
            "query_string": query.encode(),
            "headers": [
                (b"host", f"{self.server[0]}:{self.server[1]}".encode()),
                *[(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            ],
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }
        self._in_send.send_nowait({"type": "websocket.connect"})
        nursery.start_soon(self._run, scope)
        first = await self._next()
        if first is None:
            raise AssertionError("the app ended without answering the handshake")
        if first["type"] == "websocket.accept":
            self.accepted = True
            return
        if first["type"] == "websocket.http.response.start":
            body = b""
            while True:
                part = await self._next()
                assert part is not None and part["type"] == "websocket.http.response.body", part
                body += part.get("body", b"")
                if not part.get("more_body", False):
                    break
            headers_out = {k.decode().lower(): v.decode() for k, v in first["headers"]}
            raise Rejected(first["status"], headers_out, body)
        raise AssertionError(f"unexpected answer to the handshake: {first}")

    async def _run(self, scope: Message) -> None:
        try:
            await self.app(scope, self.asgi_receive, self.asgi_send)
        finally:
            self.app_done.set()
            self._out_send.close()

    async def _next(self, within: float = WAIT) -> Message | None:
        """The next message the app sent, or None once it has returned."""
        with trio.fail_after(within):
            try:
                return await self._out_recv.receive()
            except trio.EndOfChannel:
                return None

    async def receive(self, within: float = WAIT) -> Message:
        message = await self._next(within)
        assert message is not None, "the app ended"
        return message

    async def receive_text(self) -> str:
        message = await self.receive()
        assert message["type"] == "websocket.send", message
        text = message.get("text")
        assert isinstance(text, str), f"expected a text frame, got {message}"
        return text

    async def receive_json(self) -> Any:
        return json.loads(await self.receive_text())

    async def send_text(self, text: str) -> None:
        await self._in_send.send({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._in_send.send({"type": "websocket.receive", "bytes": data})

    async def send_json(self, value: Any) -> None:
        await self.send_text(json.dumps(value))

    async def expect_close(self, within: float = WAIT) -> Closed:
        """Read (and keep) frames until the server's close; return its code and reason.
        `within`: the longest wait for each message."""
        frames: list[str] = []
        while True:
            message = await self.receive(within)
            if message["type"] == "websocket.close":
                return Closed(message.get("code", 1000), message.get("reason") or "", frames)
            assert message["type"] == "websocket.send", message
            frames.append(message.get("text") or "")

    async def wait_app_done(self) -> None:
        with trio.fail_after(WAIT):
            await self.app_done.wait()

    async def close(self, code: int = 1000) -> None:
        """The client closes (or goes away): the app sees `websocket.disconnect`."""
        if not self.client_closed and self.server_closed is None:
            self.client_closed = True
            self._in_send.send_nowait({"type": "websocket.disconnect", "code": code})

    async def aclose(self) -> None:
        """Close from the client side unless already closed; wait for the app to end."""
        await self.close()
        await self.wait_app_done()


class Subscriber(SubscriberBase):
    """A connected subscriber over the fake WebSocket whose confirmation has been read."""

    wait = WAIT

    def __init__(self, ws: FakeWebSocket) -> None:
        super().__init__()
        self.ws = ws

    @property
    def ip(self) -> str:
        return self.ws.ip

    async def recv(self) -> dict[str, Any]:
        frame = await self.ws.receive_json()
        assert isinstance(frame, dict), frame
        return frame

    async def send(self, frame: Any) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        elif isinstance(frame, str):
            await self.ws.send_text(frame)
        else:
            await self.ws.send_json(frame)

    async def closed(self, within: float = WAIT) -> Closed:
        return await self.ws.expect_close(within)

    def pending(self) -> list[Message]:
        """What the server has sent and the test has not read yet (without waiting)."""
        out: list[Message] = []
        while True:
            try:
                out.append(self.ws._out_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out
