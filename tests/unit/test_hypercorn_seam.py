"""hubd's Hypercorn seam (`hubd.web.seam`) over in-memory streams, against Hypercorn's own
`TCPServer` where the difference is the point.

The stock-Hypercorn tests reproduce the upstream behaviour hubd guards against: when a
Hypercorn release changes it (pgjones/hypercorn#225 fixed, the keep-alive timer changed),
they fail and say which guard to revisit. The source fingerprints fail when the upstream
functions that `hubd.web.seam` re-implements change, so the copies are re-synced. The
last test checks that only `hubd.web.seam` imports Hypercorn's private modules."""

from __future__ import annotations

import ast
import errno
import hashlib
import inspect
import logging
import os
import re
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import Handshake, WSStream
from hypercorn.trio import task_group as hypercorn_task_group
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from wsproto.connection import Connection as WSConnection
from wsproto.frame_protocol import Buffer as WSBuffer
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, MessageDecoder

from hubd.web.seam import accept, direct_write
from hubd.web.seam.connection import HubdTCPServer, IdleConnections, ServeOptions
from hubd.web.seam.native import NativeWebSocket, native_websocket
from hubd.web.seam.native_http import NativeRequest, native_request
from hubd.web.seam.throttle import ThrottleFilter

HANDSHAKE = 10.0
KEEP_ALIVE = 75.0
LIMIT = 4096

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


class _Sock:
    family = 2  # AF_INET: Hypercorn reads the peer and local addresses from it

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.9", 40000)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)


class _ServerStream(trio.abc.HalfCloseableStream):
    """The server half of an in-memory connection, with the `socket` Hypercorn reads."""

    def __init__(self, inner: trio.StapledStream[Any, Any]) -> None:
        self.inner = inner
        self.socket = _Sock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _config() -> Config:
    config = Config()
    config.keep_alive_timeout = KEEP_ALIVE
    config.h11_max_incomplete_size = LIMIT
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error.test")
    return config


def _options(http2: bool = False, native: bool = True) -> ServeOptions:
    return ServeOptions(HANDSHAKE, LIMIT, http2, native)


async def http_app(scope: Scope, receive: Any, send: Any) -> None:
    """200 for HTTP; WebSockets are refused with 401 unless ?ok, then echo frames."""
    if scope["type"] == "http":
        body = b'{"ok":true}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    assert (await receive())["type"] == "websocket.connect"
    if scope["query_string"] != b"ok":
        body = b'{"error":"unauthorized"}'
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        received.append(message)
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "echo:" + message["text"]})


received: list[dict[str, Any]] = []


def _stock(stream: Any) -> TCPServer:
    from hypercorn.utils import wrap_app

    return TCPServer(wrap_app(http_app, 0, None), _config(), WorkerContext(None), {}, stream)


def _hubd(
    stream: Any, http2: bool = False, native: bool = True, idle: IdleConnections | None = None
) -> HubdTCPServer:
    from hypercorn.utils import wrap_app

    return HubdTCPServer(
        wrap_app(http_app, 0, None),
        _config(),
        WorkerContext(None),
        {},
        stream,
        _options(http2, native),
        idle,
    )


def _serving(
    app: App, stream: Any, *, native: bool = True, options: ServeOptions | None = None
) -> HubdTCPServer:
    """hubd's server for `app` over `stream` (WebSockets natively unless `native` is off)."""
    from hypercorn.utils import wrap_app

    return HubdTCPServer(
        wrap_app(app, 0, None),
        _config(),
        WorkerContext(None),
        {},
        stream,
        options or _options(native=native),
    )


def _hubd_stream(stream: Any) -> HubdTCPServer:
    """hubd's server with WebSockets served by Hypercorn's stream (as with compression)."""
    return _hubd(stream, native=False)


class Conn:
    """The client half, and the server task's outcome."""

    def __init__(self, client: trio.StapledStream[Any, Any]) -> None:
        self.client = client
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()

    async def ended(self) -> float:
        """The trio time the server task returned."""
        await self.done.wait()
        assert self.ended_at is not None
        return self.ended_at

    async def read_until_closed(self, within: float = 200.0) -> bytes:
        out = bytearray()
        with trio.fail_after(within):
            while chunk := await self.client.receive_some(65536):
                out += chunk
        return bytes(out)

    async def read_some(self) -> bytes:
        return bytes(await self.client.receive_some(65536))

    async def read_until(self, done: Callable[[bytes], bool], within: float = 60.0) -> bytes:
        """Read until `done(what was read)`; fails if the server closes first or it takes
        longer than `within` (trio's time: the tests that pass it run on a mock clock)."""
        data = b""
        with trio.fail_after(within):
            while not done(data):
                chunk = await self.read_some()
                assert chunk, f"the server closed after {data[:300]!r}"
                data += chunk
        return data


async def _serve(nursery: trio.Nursery, make: Callable[[Any], Any], capture: bool = False) -> Conn:
    client, server = trio.testing.memory_stream_pair()
    conn = Conn(client)

    async def run() -> None:
        try:
            await make(_ServerStream(server)).run()
        except BaseException as exc:
            if not capture:
                raise
            conn.error = exc
        conn.ended_at = trio.current_time()
        conn.done.set()

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()
    return conn


def upgrade(query: str = "") -> bytes:
    return (
        f"GET /v1/ws/subscribe{'?' + query if query else ''} HTTP/1.1\r\nHost: x\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def ws_frame(payload: bytes, opcode: int = 1, *, mask: bool = True) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(data: bytes) -> int:
    """The code of the close frame (opcode 8) in what the server wrote after its 101."""
    frames = data.split(b"\r\n\r\n", 1)[1]
    while frames:
        opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
        start = 2
        if length == 126:
            length, start = struct.unpack("!H", frames[2:4])[0], 4
        if opcode == 8:
            return int(struct.unpack("!H", frames[start : start + 2])[0])
        frames = frames[start + length :]
    raise AssertionError(f"no close frame in {data!r}")


GET = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"


# -- the upstream bug and its guard -----------------------------------------------------


async def test_stock_hypercorn_still_raises_on_a_byte_behind_a_refused_upgrade(
    nursery: trio.Nursery,
) -> None:
    """pgjones/hypercorn#225. If this fails, Hypercorn changed: check whether the early-data
    handling in `hubd.web.seam.protocol.HubdWSStream` is still needed."""
    conn = await _serve(nursery, _stock, capture=True)
    await conn.client.send_all(upgrade() + b"x")
    await conn.read_until_closed()
    await conn.ended()
    assert conn.error is not None
    assert isinstance(conn.error, BaseExceptionGroup)
    assert conn.error.subgroup(h11.LocalProtocolError) is not None


async def test_a_byte_behind_a_refused_upgrade_gets_the_refusal_and_nothing_else(
    nursery: trio.Nursery,
) -> None:
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(upgrade() + b"x")
    data = await conn.read_until_closed()
    assert data.startswith(b"HTTP/1.1 401 ")
    assert data.count(b"HTTP/1.1") == 1
    assert data.endswith(b'{"error":"unauthorized"}')


async def test_a_close_frame_after_reading_the_refusal_is_harmless(nursery: trio.Nursery) -> None:
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(upgrade())
    first = await conn.read_some()
    assert first.startswith(b"HTTP/1.1 401 ")
    await conn.client.send_all(ws_frame(b"\x03\xe8", opcode=8))
    await conn.read_until_closed()
    await conn.ended()


async def test_a_first_frame_pipelined_behind_an_accepted_upgrade_is_read(
    nursery: trio.Nursery,
) -> None:
    received.clear()
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(upgrade("ok") + ws_frame(b"one") + ws_frame(b"two"))
    data = await conn.read_until(lambda data: b"echo:two" in data)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.index(b"echo:one") < data.index(b"echo:two")


async def test_a_client_gone_before_its_101_is_not_an_error_of_the_app(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The 101 that finds the client gone (it reset right after its request) ends the
    WebSocket as a disconnect, as Hypercorn's send does, not as an app failure logged with
    a traceback (which any client could provoke at will)."""
    got: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await trio.sleep(1)  # deciding: meanwhile the client goes
        await send({"type": "websocket.accept"})
        got.append(await receive())

    conn = await _serve(nursery, partial(_serving, app))
    await conn.client.send_all(upgrade("ok"))
    await trio.testing.wait_all_tasks_blocked()
    await conn.client.aclose()
    with trio.fail_after(60):
        await conn.ended()
    assert got == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]
    assert "Error in ASGI Framework" not in caplog.text


async def test_thousands_of_frames_in_one_read_are_all_read_in_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    got: list[str] = []
    count = 10_000
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while len(got) < count:
            got.append((await receive())["text"])
        done.set()
        await receive()

    conn = await _serve(nursery, partial(_serving, app))
    await conn.client.send_all(upgrade("ok"))
    await conn.read_until(lambda data: b"\r\n\r\n" in data)
    await conn.client.send_all(b"".join(_frame(str(i % 10).encode()) for i in range(count)))
    with trio.fail_after(60):
        await done.wait()
    assert got == [str(i % 10) for i in range(count)]


@pytest.mark.parametrize("query", ["ok", "ok&subprotocol"])
async def test_a_native_101_is_the_one_hypercorn_writes(nursery: trio.Nursery, query: str) -> None:
    """hubd writes the 101 of a native upgrade itself: byte for byte what Hypercorn's
    stream (through h11) writes for the same request, but for the date."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        accept = {"type": "websocket.accept"}
        if "subprotocol" in scope["query_string"].decode():
            accept["subprotocol"] = "hubd.v1"
        await send(accept)
        await receive()

    heads = []
    for native in (True, False):
        make = partial(_serving, app, native=native)

        conn = await _serve(nursery, make)
        request = upgrade(query).replace(
            b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: hubd.v1, x\r\n\r\n"
        )
        await conn.client.send_all(request)
        data = await conn.read_until(lambda data: b"\r\n\r\n" in data)
        head = data.split(b"\r\n\r\n")[0]
        heads.append([line for line in head.split(b"\r\n") if not line.startswith(b"date: ")])
        await conn.client.aclose()
    assert heads[0] == heads[1]
    assert heads[0][0] == b"HTTP/1.1 101 "


async def test_a_receive_cancelled_between_fragments_loses_nothing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """hubd's reader may be cancelled while it waits (its heartbeat scope is re-armed that
    way): the fragments of a message read so far are kept for the next receive."""

    got: list[dict[str, Any]] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        with trio.move_on_after(1):
            got.append(await receive())
        got.append(await receive())
        done.set()
        await receive()

    make = partial(_serving, app)

    conn = await _serve(nursery, make)
    first = ws_frame(b"ab")
    first = bytes([0x01]) + first[1:]  # text, not final
    await conn.client.send_all(upgrade("ok") + first)
    await trio.sleep(2)  # the first receive is cancelled meanwhile
    rest = ws_frame(b"cd", opcode=0)  # the final continuation
    await conn.client.send_all(rest)
    await done.wait()
    assert got == [{"type": "websocket.receive", "text": "abcd", "bytes": None}]


async def _body_echo(scope: Scope, receive: Any, send: Any) -> None:
    """Reads the whole body, answers 200 with it (and who served it); 413 without reading
    a body declared over 10 bytes, with `Connection: close`."""
    served_by.append(native_request(send))
    headers = dict(scope["headers"])
    if int(headers.get(b"content-length", b"0")) > 10:
        start = {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"connection", b"close"), (b"content-length", b"0")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers_out = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers_out})
    await send({"type": "http.response.body", "body": body})


served_by: list[object] = []


def _native_http(stream: Any) -> HubdTCPServer:
    options = ServeOptions(HANDSHAKE, LIMIT, False, True, frozenset({"/v1/events"}))
    return _serving(_body_echo, stream, options=options)


def _post(body: bytes, path: str = "/v1/events") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        len(body),
        body,
    )


def _answered(data: bytes, count: int) -> bool:
    """Whether `data` holds `count` whole responses (heads and Content-Length bodies)."""
    parsed = data.split(b"HTTP/1.1 ")[1:]
    if len(parsed) < count or not all(b"\r\n\r\n" in p for p in parsed):
        return False
    for part in parsed:
        head, body = part.split(b"\r\n\r\n", 1)
        length = re.search(rb"content-length: (\d+)", head)
        if length is None or len(body) < int(length.group(1)):
            return False
    return True


async def _responses(conn: Conn, count: int) -> list[bytes]:
    data = await conn.read_until(lambda data: _answered(data, count))
    return [b"HTTP/1.1 " + p for p in data.split(b"HTTP/1.1 ")[1:]]


async def test_a_native_path_is_served_on_the_connection_and_kept_alive(
    nursery: trio.Nursery,
) -> None:
    served_by.clear()
    conn = await _serve(nursery, _native_http)
    await conn.client.send_all(_post(b"one"))
    (first,) = await _responses(conn, 1)
    assert first.startswith(b"HTTP/1.1 200 ") and first.endswith(b"one")
    await conn.client.send_all(_post(b"two") + _post(b"three") + _post(b"four", "/other"))
    answers = await _responses(conn, 3)
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [b"two", b"three", b"four"]
    assert [isinstance(s, NativeRequest) for s in served_by] == [True, True, True, False]
    assert conn.ended_at is None  # still kept alive


async def test_a_native_body_that_comes_in_pieces_is_read_whole(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _native_http)
    request = _post(b"0123456789")
    await conn.client.send_all(request[:-7])
    await trio.sleep(1)
    await conn.client.send_all(request[-7:])
    (answer,) = await _responses(conn, 1)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"0123456789")


async def test_a_native_answer_before_the_body_closes_the_connection(nursery: trio.Nursery) -> None:
    conn = await _serve(nursery, _native_http)
    await conn.client.send_all(_post(b"x" * 100)[:-50])  # over 10 bytes: refused unread
    data = await conn.read_until_closed()
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.count(b"HTTP/1.1") == 1
    await conn.ended()


def _frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True) -> bytes:
    frame = ws_frame(payload, opcode, mask=mask)
    return frame if fin else bytes([frame[0] & 0x7F]) + frame[1:]


# Client byte sequences (after the handshake), each sent in one write: hubd decodes simple
# text frames itself and leaves the rest to wsproto; what the app is given, and how the
# connection ends, must be exactly what wsproto alone (Hypercorn's stream) gives.
CLIENT_BYTES = {
    "simple": _frame(b"a") + _frame(b"") + _frame("é ✓".encode()) + _frame(b"x" * 125),
    "lengths": _frame(b"y" * 126) + _frame(b"z" * 3000) + _frame(b"w"),
    "control between": _frame(b"1") + _frame(b"p", 9) + _frame(b"2") + _frame(b"", 10),
    "fragments": _frame(b"3") + _frame(b"fr", fin=False) + _frame(b"ag", 0) + _frame(b"4"),
    "binary": _frame(b"5") + _frame(b"\x00\xff", 2) + _frame(b"6"),
    "invalid utf-8": _frame(b"7") + _frame(b"\xc3\x28") + _frame(b"8"),
    "unmasked": _frame(b"9") + _frame(b"u", mask=False) + _frame(b"10"),
    "reserved bits": _frame(b"11") + bytes([0xC1]) + _frame(b"r")[1:] + _frame(b"12"),
    "close": _frame(b"13") + _frame(b"\x03\xe8bye", 8) + _frame(b"14"),
    "split": _frame(b"15") + _frame(b"sp")[:3],
}
# A ping and a binary frame, zero mask keys, whose payloads sent on their own look like a
# simple text frame: sent after the frame's head alone, they are still its payload.
_LOOKALIKE = b"\x81\x81\x00\x00\x00\x00A" + b"tail...."
_HEAD = b"\x80" + bytes([0x80 | len(_LOOKALIKE)]) + b"\x00\x00\x00\x00"
CLIENT_WRITES = {name: [data] for name, data in CLIENT_BYTES.items()}
for _opcode, _name in ((0x9, "mid-ping"), (0x2, "mid-binary")):
    _head = bytes([_HEAD[0] | _opcode]) + _HEAD[1:]
    CLIENT_WRITES[_name] = [_frame(b"16") + _head, _LOOKALIKE + _frame(b"17")]


@pytest.mark.parametrize("name", list(CLIENT_WRITES))
async def test_native_frames_read_as_wsproto_reads_them(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, name: str
) -> None:

    outcomes = []
    for native in (True, False):
        seen: list[dict[str, Any]] = []

        async def app(scope: Scope, receive: Any, send: Any, seen: list[Any] = seen) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            while True:
                message = await receive()
                seen.append(message)
                if message["type"] == "websocket.disconnect":
                    return

        make = partial(_serving, app, native=native)

        conn = await _serve(nursery, make)
        await conn.client.send_all(upgrade("ok"))
        data = await conn.read_until(lambda data: b"\r\n\r\n" in data)
        for write in CLIENT_WRITES[name]:  # after the 101: not early data
            await conn.client.send_all(write)
            await trio.sleep(1)
        with trio.move_on_after(5):
            while chunk := await conn.client.receive_some(65536):
                data += chunk
        await conn.client.aclose()
        with trio.fail_after(5):
            await conn.ended()
        close = close_code(data) if b"\x88" in data.split(b"\r\n\r\n", 1)[1] else None
        outcomes.append(([m for m in seen if m["type"] == "websocket.receive"], close))
    assert outcomes[0] == outcomes[1]


async def test_too_much_data_before_the_upgrade_is_answered_closes_with_1008(
    nursery: trio.Nursery,
) -> None:
    """Hypercorn's stream reads while the app decides: more than EARLY_DATA_LIMIT is 1008."""
    conn = await _serve(nursery, _hubd_stream)
    junk = ws_frame(b"x" * 60000) * 2  # > EARLY_DATA_LIMIT
    await conn.client.send_all(upgrade("ok") + junk)
    data = await conn.read_until_closed()
    assert close_code(data) == 1008


async def test_served_natively_frames_sent_with_the_handshake_wait_and_are_all_read(
    nursery: trio.Nursery,
) -> None:
    """Nothing is read while the app decides on a native upgrade: what the client sent
    behind its handshake (here over EARLY_DATA_LIMIT) waits in the stream and is read
    after the 101, every frame, in order."""
    received.clear()
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(upgrade("ok") + ws_frame(b"a" * 60000) + ws_frame(b"b" * 60000))
    data = await conn.read_until(lambda _: len(received) >= 2)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert [m["text"] for m in received] == ["a" * 60000, "b" * 60000]


async def test_the_guard_logs_a_failing_connection_once_and_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = accept.Counters()

    class Boom:
        async def run(self) -> None:
            raise h11.LocalProtocolError("Can't send data when our state is ERROR")

    _client, server = trio.testing.memory_stream_pair()
    with caplog.at_level(logging.WARNING, logger="hubd.server"):
        for _ in range(5):
            await accept.guarded(lambda s: Boom(), counters, _ServerStream(server))  # type: ignore[arg-type,return-value]
    assert counters.failed.total == 5
    lines = [r for r in caplog.records if r.name == "hubd.server"]
    assert len(lines) == 1
    assert "LocalProtocolError" in lines[0].getMessage()
    assert "peer=127.0.0.9:40000" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback


# -- time limits ------------------------------------------------------------------------


async def test_stock_hypercorn_holds_a_connection_closed_before_a_request_for_the_keep_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _stock)
    start = trio.current_time()
    await conn.client.send_eof()
    await conn.read_until_closed()
    assert await conn.ended() - start == pytest.approx(KEEP_ALIVE)


async def test_a_connection_closed_before_a_request_is_released_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _hubd)
    start = trio.current_time()
    await conn.client.send_eof()
    await conn.read_until_closed()
    assert await conn.ended() == start


async def test_a_half_closed_connection_still_gets_its_answer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(GET)
    await conn.client.send_eof()
    data = await conn.read_until_closed()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b'{"ok":true}')


async def test_the_first_request_head_must_arrive_within_the_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _hubd)
    start = trio.current_time()
    await conn.client.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # no blank line
    await conn.read_until_closed()
    assert await conn.ended() - start == pytest.approx(HANDSHAKE)


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _hubd)
    start = trio.current_time()
    await conn.read_until_closed()
    assert await conn.ended() - start == pytest.approx(HANDSHAKE)


async def test_keep_alive_waits_then_the_next_head_gets_the_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(GET)
    assert (await conn.read_some()).startswith(b"HTTP/1.1 200 ")
    await trio.sleep(KEEP_ALIVE - 5)  # idle between requests: the keep-alive applies
    assert conn.ended_at is None
    started = trio.current_time()
    await conn.client.send_all(b"GET /v1/health HTTP/1.1\r\n")  # a head that never ends
    await conn.read_until_closed()
    assert await conn.ended() - started == pytest.approx(HANDSHAKE)


async def test_an_idle_keep_alive_connection_closes_when_its_time_is_up(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(GET)
    assert (await conn.read_some()).startswith(b"HTTP/1.1 200 ")
    answered = trio.current_time()
    await conn.read_until_closed()
    assert await conn.ended() - answered == pytest.approx(KEEP_ALIVE)


async def test_shutdown_closes_idle_connections_at_once_and_answers_the_one_in_flight(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """As Hypercorn's idle timers do when its worker is terminated: connections with no
    request in flight (before their first one, or between keep-alive requests) close
    at once; a request in flight is still answered."""
    idle = IdleConnections()
    make = partial(_hubd, idle=idle)
    before_first = await _serve(nursery, make)
    kept_alive = await _serve(nursery, make)
    await kept_alive.client.send_all(GET)
    assert (await kept_alive.read_some()).startswith(b"HTTP/1.1 200 ")
    in_flight = await _serve(nursery, make)
    await in_flight.client.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")  # head unfinished
    await trio.testing.wait_all_tasks_blocked()
    assert len(idle) == 3  # a head being read is not a request in flight yet
    await trio.sleep(1)
    stopped = trio.current_time()
    idle.close_all()
    for conn in (before_first, kept_alive, in_flight):
        await conn.read_until_closed()
        assert await conn.ended() == stopped
    assert len(idle) == 0


# -- sizes and protocols ------------------------------------------------------------------


def _head_of(size: int) -> bytes:
    start = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(("size", "status"), [(LIMIT, b"200"), (LIMIT + 1, b"431")])
async def test_the_header_limit_is_exact(nursery: trio.Nursery, size: int, status: bytes) -> None:
    conn = await _serve(nursery, _hubd)
    head = _head_of(size)
    assert len(head) == size
    await conn.client.send_all(head)
    data = await conn.read_some()
    assert data.startswith(b"HTTP/1.1 " + status + b" ")


async def test_stock_hypercorn_accepts_heads_over_its_limit(nursery: trio.Nursery) -> None:
    """Hypercorn reads 64 KiB at a time and h11 checks between reads: a head of nearly
    the limit plus 64 KiB passes. If this fails, `_read_data`'s read sizing may go."""
    conn = await _serve(nursery, _stock)
    await conn.client.send_all(_head_of(LIMIT + 60000))
    assert (await conn.read_some()).startswith(b"HTTP/1.1 200 ")


async def test_h2c_upgrade_is_answered_in_http_1_1_unless_http2_is_on(
    nursery: trio.Nursery,
) -> None:
    request = (
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    off = await _serve(nursery, _hubd)
    await off.client.send_all(request)
    assert (await off.read_some()).startswith(b"HTTP/1.1 200 ")
    on = await _serve(nursery, lambda s: _hubd(s, http2=True))
    await on.client.send_all(request)
    assert (await on.read_some()).startswith(b"HTTP/1.1 101 ")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (ws_frame(b"hi", mask=False), 1002),  # client frames must be masked
        (ws_frame(b"\xff\xfe"), 1007),  # text that is not UTF-8
        (ws_frame(b"x", opcode=3), 1002),  # reserved opcode
        (bytes([0xF1]) + ws_frame(b"x")[1:], 1002),  # RSV bits without an extension
    ],
)
async def test_a_malformed_frame_closes_with_its_code_and_the_app_is_told(
    nursery: trio.Nursery, frame: bytes, code: int
) -> None:
    received.clear()
    conn = await _serve(nursery, _hubd)
    await conn.client.send_all(upgrade("ok"))
    assert (await conn.read_some()).startswith(b"HTTP/1.1 101 ")
    await conn.client.send_all(frame)
    data = b"HTTP/1.1 101 \r\n\r\n" + await conn.read_until_closed()
    assert close_code(data) == code
    await trio.testing.wait_all_tasks_blocked()
    assert received[0]["type"] == "websocket.disconnect"
    assert received[0]["code"] == code


async def test_stock_hypercorn_drops_a_malformed_frame_without_a_close_frame(
    nursery: trio.Nursery,
) -> None:
    conn = await _serve(nursery, _stock)
    await conn.client.send_all(upgrade("ok"))
    assert (await conn.read_some()).startswith(b"HTTP/1.1 101 ")
    await conn.client.send_all(ws_frame(b"hi", mask=False))
    assert b"\x88" not in await conn.read_until_closed()


# -- accepting --------------------------------------------------------------------------


class _Exhausted(trio.abc.Listener[trio.SocketStream]):
    """A listener whose accept fails with EMFILE `failures` times, then blocks."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.recovered = trio.Event()

    async def accept(self) -> trio.SocketStream:
        self.calls += 1
        if self.calls <= self.failures:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        self.recovered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_backs_off_on_emfile_and_logs_once_per_interval(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters = accept.Counters()
    listener = _Exhausted(failures=250)  # 25 s of retries at 0.1 s
    started = trio.current_time()

    async def handler(stream: Any) -> None:
        raise AssertionError("nothing was accepted")

    with caplog.at_level(logging.WARNING, logger="hubd.server"):
        nursery.start_soon(accept.accept_loop, listener, nursery, handler, counters)
        await listener.recovered.wait()
    assert trio.current_time() - started == pytest.approx(25.0)
    assert counters.accept.total == 250
    lines = [r.getMessage() for r in caplog.records if r.name == "hubd.server"]
    assert len(lines) == 3  # at 0, 10 and 20 s
    assert "EMFILE" in lines[0]
    assert "more in the last 10 s" in lines[1]


# -- the seam itself ----------------------------------------------------------------------

# The upstream functions hubd.web.seam re-implements with changes, by source digest.
UPSTREAM: dict[tuple[Any, str], str] = {
    (TCPServer, "run"): "fd34b021d1a86c98",
    (TCPServer, "_read_data"): "7ca747d922c65cf1",
    (TCPServer, "_close"): "bc73c4ae25a1ceec",
    (WSStream, "_handle_events"): "b90f3f595ff9fd47",
    (WSStream, "handle"): "743209f49012b8c7",
    # connection._wrap builds the wrapper without its constructor (whose H11Protocol was
    # built and discarded); HubdTCPServer.protocol_send handles Updated itself: the idle
    # timer (keep-alive, and closing at once when the worker is terminated) becomes a
    # deadline on the reads and IdleConnections.
    (ProtocolWrapper, "__init__"): "df25e181b9e2e64d",
    (TCPServer, "protocol_send"): "225856426bff7be0",
    (TCPServer, "_idle_timeout"): "210ce1014d98e1cb",
    # native.NativeWebSocket serves a WebSocket as WSStream and the app task do (scope,
    # accept, rejection, error responses, frames, the end of the app), with the upgrade
    # test of _create_stream, and relies on _handle_events stopping when no stream was
    # made for the request.
    (H11Protocol, "_create_stream"): "a2338a57ab343908",
    (H11Protocol, "_handle_events"): "bd4a76b2837e8722",
    (WSStream, "app_send"): "a6dd1160bfc416e7",
    (WSStream, "_accept"): "144623ad2e13fc56",
    (WSStream, "_send_rejection"): "3ab1858d1e4cc5b0",
    (WSStream, "_send_error_response"): "8b6acae9ca1ce378",
    (Handshake, "accept"): "e163533bf7919793",
    (Handshake, "is_valid"): "fa339f39b4dc32d5",
    (hypercorn_task_group, "_handle"): "06081a56a9930825",
    # native_http.NativeRequest serves a request as HTTPStream does (scope, response,
    # 500, the end) and writes its response as H11Protocol.stream_send would.
    (HTTPStream, "handle"): "6ed2e34c5e708c6a",
    (HTTPStream, "app_send"): "c806044b99736985",
    (H11Protocol, "stream_send"): "56a36254a368d71a",
    (H11Protocol, "_maybe_recycle"): "3ac53f52bc4e65de",
    # native._between_frames reads wsproto's state between frames (its event deque, the
    # frame decoder's header and buffer, the message decoder's opcode).
    (FrameDecoder, "__init__"): "758883edf5387045",
    (FrameDecoder, "process_buffer"): "f19287e506f3178b",
    (FrameProtocol, "__init__"): "037e847db237d081",
    (MessageDecoder, "__init__"): "920021f4be5f56f3",
    (MessageDecoder, "process_frame"): "665670eb3302d629",
    (WSConnection, "events"): "e4d77be0bfef1af2",
    (WSBuffer, "__len__"): "3d8433cac5e0c7e6",
}


def _digest(cls: Any, name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(cls, name)).encode()).hexdigest()[:16]


def test_wsproto_is_the_tested_version() -> None:
    assert version("wsproto") == "1.3.2", (
        "hubd.web.seam.native reads wsproto 1.3.2's state between frames: re-run the seam "
        "tests, update the digests above, then the pin"
    )


def test_hypercorn_is_a_tested_version() -> None:
    assert version("hypercorn") == "0.18.0", (
        "hubd.web.seam was tested with Hypercorn 0.18.0; re-run the "
        "seam and end-to-end tests, update the digests below, then widen the pin"
    )


@pytest.mark.parametrize(("cls", "name"), list(UPSTREAM))
def test_the_upstream_code_hubd_re_implements_is_unchanged(cls: Any, name: str) -> None:
    assert _digest(cls, name) == UPSTREAM[(cls, name)], (
        f"Hypercorn's {cls.__name__}.{name} changed: re-sync hubd.web.seam with it"
    )


def test_the_hooks_hubd_overrides_still_exist() -> None:
    for cls, names in [
        (TCPServer, ["protocol_send", "_initiate_server_close", "_close"]),
        (H11Protocol, ["_check_protocol", "_create_stream"]),
        (WSStream, ["_accept", "_send_wsproto_event", "app_send"]),
    ]:
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is gone"


@pytest.mark.parametrize("native", [True, False])
async def test_a_websocket_served_by_hubd_gets_the_direct_write_path(
    nursery: trio.Nursery, native: bool
) -> None:
    """What `hubd.web.ws` looks for behind the ASGI `send` of a connection hubd serves is
    there: hubd's own `NativeWebSocket` (the default), or with native WebSockets off
    (compression) Hypercorn's stream, protocol and socket owner for
    `hubd.web.seam.direct_write`. A Hypercorn change (or a change to the seam) that would
    silently fall back to the slower plain ASGI path fails here."""

    found: list[object] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        found.append(native_websocket(send))
        stream = direct_write.hypercorn_stream(send)
        found.append(stream)
        await send({"type": "websocket.accept"})
        await receive()

    make = partial(_serving, app, native=native)

    conn = await _serve(nursery, make)
    await conn.client.send_all(upgrade("ok"))
    assert (await conn.read_some()).startswith(b"HTTP/1.1 101 ")
    own, stream = found
    if native:
        assert isinstance(own, NativeWebSocket)
        assert stream is None
    else:
        assert own is None
        assert isinstance(stream, WSStream)
        assert isinstance(stream.send.__self__, H11Protocol)  # type: ignore[attr-defined]
    # Over real TCP frames go to the socket's descriptor: tests/e2e/test_observability.py
    # and tests/e2e/test_hostile_connections.py check the `connected` line says write=direct.


async def test_hypercorns_error_log_is_throttled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("hypercorn.error.throttle-test")
    logger.addFilter(ThrottleFilter(limit=5, interval=10.0))
    with caplog.at_level(logging.ERROR, logger=logger.name):
        for _ in range(100):  # a client repeating whatever makes the app fail
            logger.error("Error in ASGI Framework %s", "x")
        await trio.sleep(10)
        logger.error("Error in ASGI Framework %s", "y")
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(lines) == 6
    assert lines[-1] == "Error in ASGI Framework y (95 more held back before this)"


# Hypercorn's public API, which any module may use: its configuration object and its
# stock trio entry point. Everything else in the `hypercorn` package is internal.
PUBLIC_HYPERCORN = {("hypercorn.config", "Config"), ("hypercorn.trio", "serve")}


def _hypercorn_imports(source: str) -> list[str]:
    """The Hypercorn imports in `source` that are not `PUBLIC_HYPERCORN` (imports inside
    functions count too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "hypercorn"]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] != "hypercorn":
                continue
            found += [
                f"{node.module}.{a.name}"
                for a in node.names
                if (node.module, a.name) not in PUBLIC_HYPERCORN
            ]
    return found


def test_the_private_import_check_sees_every_form() -> None:
    source = """
import hypercorn.protocol.h11
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer
def later():
    from hypercorn.utils import wrap_app
"""
    assert _hypercorn_imports(source) == [
        "hypercorn.protocol.h11",
        "hypercorn.trio.tcp_server.TCPServer",
        "hypercorn.utils.wrap_app",
    ]


def test_only_the_seam_imports_hypercorns_internals() -> None:
    package = Path(__file__).resolve().parents[2] / "hubd"
    seam = package / "web" / "seam"
    found = [
        f"{path.relative_to(package.parent)} imports {name}"
        for path in sorted(package.rglob("*.py"))
        if not path.is_relative_to(seam)
        for name in _hypercorn_imports(path.read_text(encoding="utf-8"))
    ]
    assert found == [], "Hypercorn's internals are used only in hubd/web/seam/"
