"""Against a real `hubd serve` (its direct socket writes, a real Hypercorn): how events are
framed in opt-in batch mode (`?batch=1`, `hub.batch_max`), permessage-deflate off unless
`hub.compression = true`, and `GET /v1/ws/stats` counting real traffic exactly. The
`?batch=` values and the confirmation's `batch` key, who may see the stats, and the
check-config cases of `hub.batch_max` / `hub.compression` are in tests/web.

Clients here connect from 127.31.0.0/16 (`batch_ip`), which no other test uses."""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from ..helpers import (
    ADMIN,
    CONFIRMATION_MESSAGE,
    HOST,
    PUB,
    SUB,
    event,
    subscribe_path,
)
from .conftest import StartHubd
from .helpers import (
    WAIT,
    SessionHubd,
    Subscriber,
    batch_ip,
    http_client,
    raw_connect,
    ws_connect,
)

pytestmark = pytest.mark.e2e

# -- helpers -------------------------------------------------------------------------------


@asynccontextmanager
async def subscribe_q(
    port: int,
    channels: str | None = "pdfm,health",
    batch: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[Subscriber]:
    """Subscribe with an optional `batch` query value; the confirmation is read as ONE
    JSON object (the raw text is checked to hold no newline)."""
    ip = batch_ip()
    resource = subscribe_path(channels, query=None if batch is None else {"batch": batch})
    async with ws_connect(port, ip, resource, headers or SUB) as ws:
        sub = Subscriber(ws, ip)
        raw = await recv_text(sub)
        assert "\n" not in raw, raw
        sub.confirmation = json.loads(raw)
        assert sub.confirmation["message"] == CONFIRMATION_MESSAGE, sub.confirmation
        yield sub


async def recv_text(sub: Subscriber) -> str:
    with trio.fail_after(WAIT):
        text = await sub.ws.get_message()
    assert isinstance(text, str), text
    return text


def split(raw: str) -> list[dict[str, Any]]:
    """The events of one text frame: newline-separated JSON objects."""
    events = [json.loads(line) for line in raw.split("\n")]
    assert all(isinstance(e, dict) for e in events), raw
    return events


async def read_frames(sub: Subscriber, total: int) -> list[list[dict[str, Any]]]:
    """Read frames until `total` events have arrived; the events grouped by frame."""
    frames: list[list[dict[str, Any]]] = []
    with trio.fail_after(WAIT):
        while sum(map(len, frames)) < total:
            frames.append(split(await recv_text(sub)))
    assert sum(map(len, frames)) == total
    return frames


async def sync(sub: Subscriber) -> None:
    """A request/reply round trip. The server's writer records delivery latency right after
    each write and before taking the next frame, so once the reply is read every frame
    before it is counted. Subscribers to `health` ping; others get an error reply."""
    if "health" in sub.subscriptions:
        request: dict[str, Any] = {"event_type": "health", "message": "ping", "id": "sync"}
    else:
        request = {"event_type": "system", "message": "client-id", "id": "sync"}
    await sub.send(request)
    with trio.fail_after(WAIT):
        while True:
            if any(e.get("ref_id") == "sync" for e in split(await recv_text(sub))):
                return


def targeted(sub: Subscriber, n: int, channel: str = "pdfm") -> list[dict[str, Any]]:
    """n events addressed to `sub` only, so that nobody else on a shared server sees them."""
    return [event(channel, "SEQ", body=i, client_id=sub.client_id) for i in range(n)]


async def publish(http: httpx.AsyncClient, body: Any, headers: Mapping[str, str] = PUB) -> Any:
    response = await http.post("/v1/events", json=body, headers=dict(headers))
    assert response.status_code == 202, response.text
    return response.json()


# -- batch mode ----------------------------------------------------------------------------


async def test_batch_events_queued_while_not_reading_share_frames(
    hub_server: SessionHubd,
) -> None:
    async with (
        subscribe_q(hub_server.port, "pdfm,health", "1") as sub,
        http_client(hub_server.url, batch_ip()) as http,
    ):
        # The client reads nothing while the 20 events are published ...
        ids = (await publish(http, targeted(sub, 20)))["ids"]
        # ... then catches up.
        frames = await read_frames(sub, 20)
        events = [e for frame in frames for e in frame]
        assert [e["body"] for e in events] == list(range(20))
        assert [e["id"] for e in events] == ids
        assert all(e["event_type"] == "pdfm" and e["message"] == "SEQ" for e in events)
        assert max(map(len, frames)) > 1, [len(f) for f in frames]
        await sync(sub)  # nothing else was queued: the next frame is the pong


async def test_batch_mode_sends_a_lone_event_in_a_frame_of_its_own(
    hub_server: SessionHubd,
) -> None:
    async with (
        subscribe_q(hub_server.port, "pdfm,health", "1") as sub,
        http_client(hub_server.url, batch_ip()) as http,
    ):
        for i in range(5):
            (one,) = targeted(sub, 1)
            one["body"] = i
            await publish(http, one)
            raw = await recv_text(sub)
            assert "\n" not in raw
            assert json.loads(raw)["body"] == i


@pytest.mark.parametrize("value", [None, "0"], ids=["absent", "0"])
async def test_default_mode_is_one_event_per_frame(
    hub_server: SessionHubd, value: str | None
) -> None:
    async with (
        subscribe_q(hub_server.port, "pdfm,health", value) as sub,
        http_client(hub_server.url, batch_ip()) as http,
    ):
        ids = (await publish(http, targeted(sub, 20)))["ids"]
        for i in range(20):
            raw = await recv_text(sub)
            assert "\n" not in raw, raw
            got = json.loads(raw)
            assert (got["body"], got["id"]) == (i, ids[i])
        await sync(sub)


async def test_batch_max_limits_events_per_frame(start_hubd: StartHubd) -> None:
    server = await start_hubd(hub={"batch_max": 4})
    async with (
        subscribe_q(server.port, "pdfm,health", "1") as sub,
        http_client(server.url, batch_ip()) as http,
    ):
        await publish(http, [event("pdfm", "SEQ", body=i) for i in range(10)])
        frames = await read_frames(sub, 10)
        assert [[e["body"] for e in f] for f in frames] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        await sync(sub)


# -- permessage-deflate --------------------------------------------------------------------

OFFER = "permessage-deflate; client_max_window_bits"
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class RawWebSocket:
    """A hand-made client on a raw socket: the exact handshake bytes, then frames parsed
    with wsproto (with permessage-deflate when the server accepted it)."""

    def __init__(
        self, stream: trio.SocketStream, status: int, headers: dict[str, str], rest: bytes
    ) -> None:
        self.stream = stream
        self.status = status
        self.headers = headers
        self.received = bytearray(rest)  # every byte after the handshake, as sent
        extensions = []
        if "sec-websocket-extensions" in headers:
            deflate = PerMessageDeflate()
            deflate.finalize(headers["sec-websocket-extensions"])
            extensions.append(deflate)
        self.conn = Connection(ConnectionType.CLIENT, extensions)
        self.conn.receive_data(bytes(rest))
        self._parts: list[str] = []
        self._messages: deque[str] = deque()

    def _drain(self) -> None:
        for ev in self.conn.events():
            if isinstance(ev, TextMessage):
                self._parts.append(ev.data)
                if ev.message_finished:
                    self._messages.append("".join(self._parts))
                    self._parts.clear()
            elif isinstance(ev, CloseConnection):
                raise AssertionError(f"server closed: {ev.code} {ev.reason}")

    async def message(self) -> str:
        with trio.fail_after(WAIT):
            self._drain()
            while not self._messages:
                data = await self.stream.receive_some(65536)
                assert data, "the server closed the socket"
                self.received += data
                self.conn.receive_data(data)
                self._drain()
        return self._messages.popleft()

    async def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self.message())
        return value

    async def send(self, value: Any) -> None:
        await self.stream.send_all(self.conn.send(TextMessage(data=json.dumps(value))))


@asynccontextmanager
async def raw_websocket(
    port: int, resource: str, headers: Mapping[str, str], extensions: str | None = OFFER
) -> AsyncIterator[RawWebSocket]:
    stream = await raw_connect(port, batch_ip())
    async with stream:
        lines = [
            f"GET {resource} HTTP/1.1",
            f"Host: {HOST}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {WS_KEY}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        with trio.fail_after(WAIT):
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                assert chunk, f"connection closed during the handshake: {data!r}"
                data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        yield RawWebSocket(stream, int(status_line.split()[1]), parsed, rest)


async def test_compression_is_refused_by_default(hub_server: SessionHubd) -> None:
    async with (
        raw_websocket(hub_server.port, subscribe_path("pdfm"), SUB) as ws,
        http_client(hub_server.url, batch_ip()) as http,
    ):
        assert ws.status == 101, ws.headers
        assert "sec-websocket-extensions" not in ws.headers, ws.headers
        confirmation = await ws.json()
        assert confirmation["message"] == CONFIRMATION_MESSAGE
        # Plain frames: FIN + text, RSV1 (the "compressed" bit) clear.
        assert ws.received[0] == 0x81
        frames = list(_frames(bytes(ws.received)))
        assert frames[0] == json.dumps(confirmation, separators=(",", ":"))
        client_id = confirmation["body"]["client_id"]
        body = {"pad": "a" * 500}
        await publish(http, event("pdfm", "BIG", body=body, client_id=client_id))
        got = await ws.json()
        assert (got["message"], got["body"]) == ("BIG", body)


def _frames(data: bytes) -> list[str]:
    """Parse uncompressed server frames (fails on RSV bits or masking)."""
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    return [f.payload for f in proto.received_frames() if f.opcode is Opcode.TEXT]


async def test_compression_on_negotiates_permessage_deflate(start_hubd: StartHubd) -> None:
    server = await start_hubd(hub={"compression": True})
    async with (
        raw_websocket(server.port, subscribe_path("pdfm,health"), SUB) as ws,
        http_client(server.url, batch_ip()) as http,
    ):
        assert ws.status == 101, ws.headers
        accepted = ws.headers.get("sec-websocket-extensions", "")
        assert accepted.split(";")[0].strip() == "permessage-deflate", ws.headers
        confirmation = await ws.json()
        assert confirmation["message"] == CONFIRMATION_MESSAGE
        assert ws.received[0] == 0xC1  # FIN + RSV1 (compressed) + text
        body = {"pad": "b" * 2000}
        ids = (await publish(http, [event("pdfm", "BIG", body=body) for _ in range(3)]))["ids"]
        for expected in ids:
            got = await ws.json()
            assert (got["id"], got["body"]) == (expected, body)
        await ws.send({"event_type": "health", "message": "ping", "id": "z"})
        assert (await ws.json())["ref_id"] == "z"
        # The three 2 KB events went over the wire compressed.
        assert len(ws.received) < 2000
        # A client that does not offer compression is served uncompressed, in both modes.
        async with (
            subscribe_q(server.port, "pdfm,health") as plain,
            subscribe_q(server.port, "pdfm,health", "1") as batched,
        ):
            ids = (await publish(http, [event("pdfm", "SEQ", body=i) for i in range(6)]))["ids"]
            for i in range(6):
                raw = await recv_text(plain)
                assert "\n" not in raw
                assert (json.loads(raw)["id"], json.loads(raw)["body"]) == (ids[i], i)
            frames = await read_frames(batched, 6)
            assert [e["id"] for f in frames for e in f] == ids
            await sync(plain)
            await sync(batched)


# -- GET /v1/ws/stats ----------------------------------------------------------------------


async def test_stats_count_real_traffic_exactly(start_hubd: StartHubd) -> None:
    server = await start_hubd()
    async with http_client(server.url, batch_ip()) as http:

        async def stats() -> dict[str, Any]:
            response = await http.get("/api/v1/ws/stats", headers=ADMIN)
            assert response.status_code == 200, response.text
            value: dict[str, Any] = response.json()
            return value

        before = await stats()
        async with (
            subscribe_q(server.port, "pdfm,health") as a,
            subscribe_q(server.port, "pdfm,orchestrator,health", "1") as b,
            subscribe_q(server.port, None) as c,
        ):
            await publish(http, [event("pdfm", "SEQ", body=i) for i in range(3)])
            await publish(http, event("orchestrator", "ONE"))
            await publish(http, event("orchestrator", "TWO"))
            await publish(http, event("global", "ALL"), ADMIN)
            await read_frames(a, 4)
            await read_frames(b, 6)
            await read_frames(c, 1)
            for sub in (a, b, c):
                await sync(sub)  # also proves pongs and error replies are not counted
            during = await stats()
            ips = [a.ip, b.ip, c.ip]

        assert during["connections"] - before["connections"] == 3
        assert during["published"] - before["published"] == 6
        assert during["delivered"] - before["delivered"] == 3 * 2 + 2 + 3
        assert during["delivery_latency"]["count"] - before["delivery_latency"]["count"] == 11
        assert during["delivery_latency"]["buckets"]["+Inf"] == during["delivery_latency"]["count"]
        assert during["dropped"] == before["dropped"]
        assert during["queued"] == 0
        moved = {
            c: {
                k: during["channels"][c][k] - before["channels"][c][k]
                for k in during["channels"][c]
            }
            for c in during["channels"]
        }
        assert moved == {
            "global": {"subscribers": 3, "published": 1, "delivered": 3},
            "health": {"subscribers": 2, "published": 0, "delivered": 0},
            "orchestrator": {"subscribers": 1, "published": 2, "delivered": 2},
            "pdfm": {"subscribers": 2, "published": 3, "delivered": 6},
            "system": {"subscribers": 0, "published": 0, "delivered": 0},
        }

        # Once the server has seen every client go, the connections are gone from the stats.
        for ip in ips:
            await server.wait_for_line(re.compile(rf"closed client_id=\S+ ip={re.escape(ip)}\b"))
        after = await stats()
        assert after["connections"] == before["connections"]
        assert all(ch["subscribers"] == 0 for ch in after["channels"].values())
        assert after["published"] == during["published"]
        assert after["delivered"] == during["delivered"]
        assert after["delivery_latency"]["count"] == during["delivery_latency"]["count"]
