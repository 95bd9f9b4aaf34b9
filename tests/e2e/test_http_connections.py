"""HTTP connection hygiene over raw sockets: `Connection: close` really closes the socket,
whatever the response; keep-alive really keeps it open; a connection the server is going
to close is announced as such."""

from __future__ import annotations

import json

import pytest
import trio

from ..helpers import HOST, MAX_PUBLISH_BYTES
from .helpers import WAIT, SessionHubd, raw_connect

pytestmark = pytest.mark.e2e

PUB = {"X-Api-Key": "pub-key"}
EVENT = json.dumps({"event_type": "pdfm", "message": "X"}).encode()


def request(
    method: str,
    path: str,
    port: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """Request bytes; Content-Length is the body's unless `headers` declares one."""
    headers = dict(headers or {})
    if method == "POST":
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
    lines = [f"{method} {path} {version}", f"Host: {HOST}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Reads HTTP/1.1 responses (Content-Length framed) off a raw stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection; got {self.buffer[:200]!r}")
        self.buffer += chunk

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        with trio.fail_after(WAIT):
            while b"\r\n\r\n" not in self.buffer:
                await self._more()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                await self._more()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    async def eof(self) -> None:
        """Wait for the server to close the connection, with nothing more sent."""
        with trio.fail_after(WAIT):
            while chunk := await self.stream.receive_some(65536):
                self.buffer += chunk
        assert self.buffer == b"", self.buffer


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [
        pytest.param("POST", "/v1/events", PUB, EVENT, 202, id="publish-202"),
        pytest.param("POST", "/v1/events", {}, EVENT, 401, id="publish-401"),
        pytest.param("POST", "/v1/events", PUB, b"{", 400, id="publish-400"),
        # The oversized body is declared but not sent: the server answers from the headers.
        pytest.param(
            "POST",
            "/v1/events",
            {**PUB, "Content-Length": str(MAX_PUBLISH_BYTES + 1)},
            b"",
            413,
            id="publish-413",
        ),
        pytest.param("GET", "/v1/nope", {}, b"", 404, id="unknown-path-404"),
        pytest.param("GET", "/v1/events", {}, b"", 405, id="wrong-method-405"),
        pytest.param(
            "POST",
            "/v1/ws/unsubscribe",
            {"Authorization": "Bearer sub-token"},
            b'{"client_id": "nobody", "event_types": ["pdfm"]}',
            404,
            id="unsubscribe-404",
        ),
    ],
)
async def test_connection_close_is_honoured(
    hub_server: SessionHubd,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    stream = await raw_connect(hub_server.port)
    async with stream:
        await stream.send_all(
            request(method, path, hub_server.port, body, {**headers, "Connection": "close"})
        )
        reader = Reader(stream)
        got_status, got_headers, got_body = await reader.response()
        assert got_status == status, got_body
        assert got_headers.get("content-type", "").startswith("application/json")
        assert isinstance(json.loads(got_body), dict)
        await reader.eof()


async def test_http_1_0_without_keep_alive_is_closed(hub_server: SessionHubd) -> None:
    stream = await raw_connect(hub_server.port)
    async with stream:
        await stream.send_all(
            request("POST", "/v1/events", hub_server.port, EVENT, PUB, version="HTTP/1.0")
        )
        reader = Reader(stream)
        assert (await reader.response())[0] == 202
        await reader.eof()


async def test_keep_alive_serves_several_requests_then_closes(hub_server: SessionHubd) -> None:
    port = hub_server.port
    stream = await raw_connect(port)
    async with stream:
        reader = Reader(stream)
        # Successes and errors alike leave a keep-alive connection usable.
        for body, status in [(EVENT, 202), (b"{", 400), (EVENT, 202)]:
            await stream.send_all(request("POST", "/v1/events", port, body, PUB))
            got_status, headers, _ = await reader.response()
            assert got_status == status
            assert headers.get("connection", "").lower() != "close"
        await stream.send_all(request("GET", "/v1/nope", port))
        assert (await reader.response())[0] == 404
        await stream.send_all(
            request("POST", "/v1/events", port, EVENT, {**PUB, "Connection": "close"})
        )
        assert (await reader.response())[0] == 202
        await reader.eof()


async def test_413_announces_close_or_keeps_the_connection_usable(
    hub_server: SessionHubd,
) -> None:
    port = hub_server.port
    size = MAX_PUBLISH_BYTES + 1
    stream = await raw_connect(port)
    async with stream:
        reader = Reader(stream)
        await stream.send_all(
            request("POST", "/v1/events", port, b"", {**PUB, "Content-Length": str(size)})
        )
        status, headers, _ = await reader.response()
        assert status == 413
        if headers.get("connection", "").lower() == "close":
            await reader.eof()
            return
        # Not announced as closing: it must still serve the client's next request.
        try:
            await stream.send_all(b" " * size)
            await stream.send_all(request("POST", "/v1/events", port, EVENT, PUB))
        except trio.BrokenResourceError as exc:
            raise AssertionError("the server closed a connection it kept alive") from exc
        assert (await reader.response())[0] == 202
