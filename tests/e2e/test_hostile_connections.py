"""Connections that never become useful, against a real daemon: closed before a request,
too slow to send their headers, headers over the limit, out of file descriptors, h2c,
and malformed WebSocket frames. Each must cost hubd nothing beyond its own bound.

The tests that need no config of their own share one daemon (`server`, this module's);
those that change its config or its process limits start their own."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import struct
from collections.abc import Iterator

import pytest
import trio

from ..helpers import SUB, event
from .conftest import StartHubd, shared_hubd
from .helpers import WAIT, HubdProcess, SessionHubd, client_ip, http_client, raw_connect, subscribe

pytestmark = pytest.mark.e2e

Hubd = HubdProcess | SessionHubd

UPGRADE = (
    "GET /v1/ws/subscribe?event_types=health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


def open_fds(server: Hubd) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


async def read_until_closed(stream: trio.SocketStream, within: float = WAIT) -> bytes:
    out = bytearray()
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return bytes(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    with shared_hubd(tmp_path_factory, "hostile") as shared:
        yield shared


async def health_ok(server: Hubd) -> None:
    async with http_client(server.url) as client:
        assert (await client.get("/v1/health")).status_code == 200


async def test_connections_closed_before_a_request_are_released_at_once(
    server: SessionHubd,
) -> None:
    baseline = open_fds(server)
    for _ in range(300):
        stream = await raw_connect(server.port)
        await stream.aclose()
    # Before, each of these sat in CLOSE_WAIT for the 75 s keep-alive timer. /proc has no
    # notification to wait on, so it is polled, within a deadline far below 75 s.
    with trio.fail_after(WAIT):
        while open_fds(server) > baseline + 5:  # noqa: ASYNC110
            await trio.sleep(0.05)
    await health_ok(server)


async def test_a_request_head_must_be_complete_within_the_handshake_timeout(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd(server={"handshake_timeout": 0.5})
    silent = await raw_connect(server.port)
    slow = await raw_connect(server.port)
    await slow.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
    with trio.fail_after(WAIT):  # far below the 75 s keep-alive it used to get
        assert await read_until_closed(silent) == b""
        assert await read_until_closed(slow) == b""
    await health_ok(server)


def _head(size: int) -> bytes:
    start = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(("size", "status"), [(65536, b"200"), (65537, b"431"), (130000, b"431")])
async def test_the_documented_header_limit_holds(
    server: SessionHubd, size: int, status: bytes
) -> None:
    stream = await raw_connect(server.port)
    answer = await send_while_reading(stream, _head(size))
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:100]


async def send_while_reading(stream: trio.SocketStream, data: bytes) -> bytes:
    """Send `data` while reading the answer until the server closes. A server that answers
    (and closes) before it has read all of `data` resets the connection: that ends the
    send, not the answer already received."""
    answer = bytearray()

    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        with trio.fail_after(WAIT), contextlib.suppress(trio.BrokenResourceError):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        nursery.cancel_scope.cancel()
    return bytes(answer)


async def test_h2c_is_not_offered_unless_configured(server: SessionHubd) -> None:
    stream = await raw_connect(server.port)
    await stream.send_all(
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


def _frame(payload: bytes, opcode: int = 1, *, mask: bool = True) -> bytes:
    head = bytes([0x80 | opcode, (0x80 if mask else 0) | len(payload)])
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _close_code(frames: bytes) -> int:
    while frames:
        opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
        start = 4 if length == 126 else 2
        if length == 126:
            length = struct.unpack("!H", frames[2:4])[0]
        if opcode == 8:
            return int(struct.unpack("!H", frames[start : start + 2])[0])
        frames = frames[start + length :]
    raise AssertionError("no close frame")


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (_frame(b"hi", mask=False), 1002, "unmasked"),
        (_frame(b"\xff\xfe"), 1007, "decode"),
        (_frame(b"x", opcode=0xB), 1002, "opcode"),
    ],
)
async def test_a_malformed_frame_closes_with_its_code_and_the_log_says_why(
    server: SessionHubd, frame: bytes, code: int, reason: str
) -> None:
    ip = client_ip()
    stream = await raw_connect(server.port, ip)
    await stream.send_all((UPGRADE + "Authorization: Bearer sub-token\r\n\r\n").encode())
    received = b""
    with trio.fail_after(WAIT):
        while b"WebSocket connection established" not in received:
            received += await stream.receive_some(65536)
    await stream.send_all(frame)
    rest = await read_until_closed(stream)
    assert _close_code(rest) == code
    line = await server.wait_for_line(
        re.compile(rf"\bclosed client_id=\S+ ip={re.escape(ip)} .*\bcode={code}\b")
    )
    assert reason in line.string
    await health_ok(server)


async def test_out_of_file_descriptors_accept_backs_off_and_recovers(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd(server={"handshake_timeout": 60.0})
    pid = server.process.pid
    keep_alive = await raw_connect(server.port)  # opened before the limit bites
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    limit = open_fds(server) + 40
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
    held: list[trio.SocketStream] = []
    try:
        for _ in range(60):  # 20 more than the daemon can accept
            held.append(await raw_connect(server.port))
        await server.wait_for_line(re.compile(r"accept is out of resources.*EMFILE"))
        # The daemon still serves the connections it has.
        await keep_alive.send_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(WAIT):
            answer = await keep_alive.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        for stream in held:
            await stream.aclose()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    await health_ok(server)  # the backlog drained: new connections are served again
    # Retried every 0.1 s, logged once per interval: no line per retry, no traceback.
    emfile = [line for line in server.lines if "EMFILE" in line]
    assert 1 <= len(emfile) <= 2
    assert "Traceback" not in server.output
    async with subscribe(server.port, ["pdfm"], SUB) as sub:
        async with http_client(server.url) as client:
            response = await client.post(
                "/v1/events", json=event(), headers={"X-Api-Key": "pub-key"}
            )
            assert response.status_code == 202
        assert (await sub.recv())["message"] == "VM_STATE_CHANGED"


async def test_a_plain_tcp_subscriber_gets_the_direct_write_path(server: SessionHubd) -> None:
    """hubd's own socket writes are the fast path (16x the plain ASGI one): a Hypercorn
    change that made hubd fall back to ASGI would pass every other test."""
    # The start line says which path connections are set up to take ...
    start = await server.wait_for_line(re.compile(r"\bstarting .*\bwrite=(\w+)"))
    assert start.group(1) == "direct", start.string
    # ... and a real connection must get it.
    async with subscribe(server.port, ["pdfm"], SUB) as sub:
        connected = rf"\bconnected client_id=\S+ ip={re.escape(sub.ip)} .* write=(\w+)"
        line = await server.wait_for_line(re.compile(connected))
    assert line.group(1) == "direct", line.string


async def test_a_body_cut_by_fin_while_its_error_goes_out_logs_no_traceback(
    server: SessionHubd,
) -> None:
    """A chunked body that stops at a FIN, on a request refused at once (Content-Length
    with Transfer-Encoding): Hypercorn half-closed the socket while the refusal was being
    written, and logged a BusyResourceError traceback per request."""
    request = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Api-Key: pub-key\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'Content-Length: 45\r\n\r\n5\r\n{"eve\r\n'
    )
    for _ in range(30):
        stream = await raw_connect(server.port)
        await stream.send_all(request)
        await stream.send_eof()
        answer = await read_until_closed(stream)
        assert answer in (b"",) or answer.startswith(b"HTTP/1.1 400 "), answer[:80]
        await stream.aclose()
    await health_ok(server)
    assert "Traceback" not in server.output
    assert "BusyResourceError" not in server.output
