"""Requests served on the connection's own task: `NativeRequest`.

Through Hypercorn every HTTP request costs a task (the ASGI app's, `TaskGroup.spawn_app`),
a memory channel that carries its body, an `HTTPStream`, and a response written through
h11 in up to three locked, shielded sends. For the routes hubd names
(`ServeOptions.native_http_paths`: publishing, the hottest route, where that cost is part
of every event's latency) over plain HTTP/1.1, `HubdTCPServer` runs the ASGI app inline on
the connection's task with this object as its `receive` and `send`:

- the request is Hypercorn's: h11 parses it and `HubdH11Protocol` hands it over (with a
  stand-in stream, `BodyBuffer`, that keeps the body events h11 has parsed);
- the app's `receive` gives the body as h11 parses it, reading the socket on this task
  when it needs more (the app's own time limit bounds that);
- the response goes through h11's state machine (so keep-alive works as before), with
  Hypercorn's response headers, and is written once, when it is complete, straight to the
  socket when nobody else writes;
- the exchange ends as Hypercorn's `HTTPStream` ends it (`StreamClosed`: the connection is
  recycled for the next request, or closed).

Only for requests whose handler reads the body to its end and answers once: after the end
of the body `receive` refuses to wait (there is nothing to wait for on this path).
`tests/unit/test_hypercorn_seam.py` fingerprints the upstream code re-implemented here.
"""

from __future__ import annotations

import contextlib
from itertools import chain
from time import time
from typing import Any
from urllib.parse import unquote

import h11
import trio
from hypercorn.events import Closed, RawData
from hypercorn.protocol.events import Body, EndBody, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.utils import build_and_validate_headers, suppress_body

from hubd.web.seam.inline import OnConnection, run_app, write_whole

MAX_RECV = 2**16


class BodyComplete(Exception):
    """Raised by `BodyBuffer` at the request's end, to leave h11's event loop before it
    waits for the response (the response is this task's to write)."""


class BodyBuffer:
    """Stands in Hypercorn's protocol for the request's stream: keeps the body events h11
    parses until the app's `receive` takes them."""

    __slots__ = ("chunks", "ended", "told")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.ended = False  # h11 has parsed the request's end
        self.told = False  # the app has been given it

    @property
    def idle(self) -> bool:
        return False

    async def handle(self, event: Any) -> None:
        if isinstance(event, Body):
            self.chunks.append(bytes(event.data))
        elif isinstance(event, EndBody):
            self.ended = True
            raise BodyComplete


class NativeRequest(OnConnection):
    """One HTTP/1.1 request served on the connection's task (see the module docstring)."""

    __slots__ = (
        "_body",
        "_head",
        "_parts",
        "_response",
        "answered",
        "scope",
    )
    _body: BodyBuffer
    _head: bytes
    answered: bool

    def __init__(self, server: Any, protocol: H11Protocol, request: h11.Request) -> None:
        super().__init__(server, protocol)
        body = protocol.stream
        assert isinstance(body, BodyBuffer)
        self._body = body
        path, _, query_string = request.target.partition(b"?")
        # The scope Hypercorn's HTTPStream builds for HTTP/1.x.
        self.scope: dict[str, Any] = {
            "type": "http",
            "http_version": request.http_version.decode(),
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": request.method.decode("ascii").upper(),
            "scheme": "http",
            "path": unquote(path.decode("ascii")),
            "raw_path": path,
            "query_string": query_string,
            "root_path": self._config.root_path,
            "headers": list(request.headers),
            "client": protocol.client,
            "server": protocol.server,
            "state": protocol.connection_state.copy(),
            "extensions": {},
        }
        self._response: dict[str, Any] | None = None
        self._head = b""  # the response head, written with the body
        self._parts: list[bytes] = []
        self.answered = False

    async def run(self, app: Any) -> None:
        """Run the app until it returns, then end the exchange as Hypercorn's HTTPStream
        does (500 if it never answered; the connection is recycled or closed)."""
        try:
            await run_app(app, self.scope, self.receive, self.send, self._config)
        finally:
            with trio.CancelScope(shield=True):
                if self._response is None and self._h11.connection.our_state is h11.SEND_RESPONSE:
                    await self._error_response(500)  # (not when h11 has answered, 400)
                # As HTTPStream's end: h11 recycles the connection for the next request
                # when both sides are done, else it is closed.
                await self._h11.stream_send(StreamClosed(stream_id=STREAM_ID))

    # -- the ASGI face ------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        body = self._body
        if body.told:
            raise RuntimeError("receive() after the request's end: nothing more comes here")
        while not body.chunks and not body.ended:
            # More of the body is in the socket: read it and let h11 parse it.
            try:
                data = await self._stream.receive_some(MAX_RECV)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return {"type": "http.disconnect"}
            with contextlib.suppress(BodyComplete):
                await self._h11.handle(RawData(data=bytes(data)))
            if self._h11.connection.their_state is h11.ERROR:
                return {"type": "http.disconnect"}  # h11 refused the body and answered
        if body.chunks:
            return {"type": "http.request", "body": body.chunks.pop(0), "more_body": True}
        body.told = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start" and self._response is None:
            self._response = message
            headers = build_and_validate_headers(message.get("headers", []))
            # As H11Protocol.stream_send: Hypercorn's headers, and `connection: close`
            # once the keep-alive request limit is reached.
            headers = list(chain(headers, self._config.response_headers("h11")))
            if self._h11.keep_alive_requests >= self._config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            self._head = self._h11_bytes(
                h11.Response(status_code=int(message["status"]), headers=headers)
            )
        elif kind == "http.response.body" and self._response is not None and not self.answered:
            body = bytes(message.get("body", b""))
            if body and not suppress_body(self.scope["method"], int(self._response["status"])):
                self._parts.append(self._h11_bytes(h11.Data(data=body)))
            if not message.get("more_body", False):
                self.answered = True
                end = self._h11_bytes(h11.EndOfMessage())
                await self._write(b"".join([self._head, *self._parts, end]))
                self._parts.clear()
                await self._config.log.access(self.scope, self._response, time() - self._start)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} on this request")

    def _h11_bytes(self, event: Any) -> bytes:
        data = self._h11.connection.send(event)
        return data if data is not None else b""

    async def _error_response(self, status: int) -> None:
        self._response = {"status": status, "headers": []}
        head = self._h11_bytes(
            h11.Response(
                status_code=status,
                headers=list(
                    chain(
                        [(b"content-length", b"0"), (b"connection", b"close")],
                        self._config.response_headers("h11"),
                    )
                ),
            )
        )
        self.answered = True
        await self._write(head + self._h11_bytes(h11.EndOfMessage()))

    async def _write(self, data: bytes) -> None:
        """Write the whole response (see `inline.write_whole`)."""
        try:
            await write_whole(self._fd, self._stream, self._lock, data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            # The client is gone: as Hypercorn's protocol_send, which then closes.
            await self._h11.handle(Closed())


def native_request(send: Any) -> NativeRequest | None:
    """The `NativeRequest` behind an ASGI `send`, or None (served by Hypercorn's stream)."""
    owner = getattr(send, "__self__", None)
    return owner if isinstance(owner, NativeRequest) else None


__all__ = ["BodyBuffer", "BodyComplete", "NativeRequest", "native_request"]
