"""What the end-to-end tests need beyond tests/helpers.py: real `hubd serve` processes and
real-socket clients.

- `HubdProcess` (trio, one per test) and `SessionHubd` (a plain `subprocess.Popen` shared
  by a whole session or module): a running daemon, its port and its stderr lines.
- `ws_connect` / `subscribe` / `rejected`: WebSocket clients on real sockets, each bound to
  its own 127.x.y.z source address (the server allows one connection per client IP);
  `raw_connect` for hand-made bytes, `http_client` for HTTP.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected

from ..helpers import (
    CONFIRMATION_MESSAGE,
    HOST,
    SUB,
    SubscriberBase,
    error_object,
    subscribe_path,
    unwrap_group,
)

HUBD = str(Path(sys.executable).with_name("hubd"))
# Generous bounds for things that take milliseconds; only hit when something is broken.
WAIT = 10.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

# "ready listening=http://127.0.0.1:41234,http://[::1]:41235"
BIND = re.compile(r"https?://(?:\[([0-9A-Fa-f:.]+)\]|([^\s:/\[\]]+)):(\d+)")
READY = re.compile(r"\bready listening=(\S+)")

# Source addresses for clients. 127.77.0.0/16 is a trusted proxy range on the shared server,
# so ordinary clients never come from it.
TRUSTED_PROXY_NET = "127.77.0.0/16"
_client_numbers = itertools.count(1)
_proxy_numbers = itertools.count(1)


def client_ip() -> str:
    """A loopback source address no other test in this session uses."""
    n = next(_client_numbers)
    return f"127.10.{n // 250}.{n % 250 + 1}"


def proxy_ip() -> str:
    """A fresh source address inside the shared server's trusted proxy range."""
    n = next(_proxy_numbers)
    return f"127.77.{n // 250}.{n % 250 + 1}"


def _ready_binds(line: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of hubd's ready line, or [] for any other line."""
    m = READY.search(line)
    if not m:
        return []
    return [(v6 or v4, int(port)) for v6, v4, port in BIND.findall(m.group(1))]


# -- a daemon per test (trio) --------------------------------------------------------------


class HubdProcess:
    """A `hubd serve` subprocess owned by one test; stderr is collected line by line."""

    def __init__(self, process: trio.Process, config_path: Path) -> None:
        self.process = process
        self.config_path = config_path
        self.lines: list[str] = []
        self.eof = False
        self.port = 0
        self.binds: list[tuple[str, int]] = []
        self.terminated = False
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        config_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> HubdProcess:
        """Run `hubd serve --config config_path` and wait for its ready line.

        `env` replaces the whole environment; `launcher` is an argv prefix that ends by
        exec'ing its arguments (the same pid); `pass_fds` stay open in the child."""
        process = await trio.lowlevel.open_process(
            [*launcher, HUBD, "serve", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
            pass_fds=tuple(pass_fds),
        )
        return await cls.attach(nursery, process, config_path)

    @classmethod
    async def attach(
        cls, nursery: trio.Nursery, process: trio.Process, config_path: Path
    ) -> HubdProcess:
        """Follow an already started `hubd serve` (its stderr readable as
        `process.stderr`) until its ready line; stopped and reaped on failure."""
        server = cls(process, config_path)
        nursery.start_soon(server._pump)
        try:
            match = await server.wait_for_line(READY, within=START_TIMEOUT)
        except BaseException:
            await server.aclose()
            raise
        server.binds = _ready_binds(match.string)
        assert server.binds, match.string
        server.port = server.binds[0][1]
        return server

    async def _pump(self) -> None:
        assert self.process.stderr is not None
        pending = b""
        try:
            async for chunk in self.process.stderr:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                self.lines += [line.decode(errors="replace") for line in complete]
                self._notify()
        except trio.ClosedResourceError:
            pass  # closed by aclose() after the process was reaped
        if pending:
            self.lines.append(pending.decode(errors="replace"))
        self.eof = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(
        self, pattern: re.Pattern[str], within: float = WAIT, *, since: int = 0
    ) -> re.Match[str]:
        """Wait until a stderr line from `lines[since]` on matches `pattern` (an observable,
        never a sleep)."""
        seen = since
        with trio.fail_after(within):
            while True:
                for line in self.lines[seen:]:
                    if m := pattern.search(line):
                        return m
                seen = len(self.lines)
                if self.eof:
                    raise AssertionError(
                        f"hubd ended its stderr without a line matching {pattern.pattern!r}:\n"
                        f"{self.output}"
                    )
                await self._changed.wait()

    async def wait_eof(self, within: float = WAIT) -> None:
        """Wait until the process has closed its stderr (it has logged everything)."""
        with trio.fail_after(within):
            while not self.eof:
                await self._changed.wait()

    def terminate(self) -> None:
        self.terminated = True
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, within: float) -> int | None:
        """The exit code, or None (and the process killed) if it does not exit in time."""
        with trio.move_on_after(within):
            return await self.process.wait()
        self.process.kill()
        await self.process.wait()
        return None

    async def aclose(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and reap it, even inside a cancelled scope."""
        with trio.CancelScope(shield=True):
            if self.process.returncode is None and not self.terminated:
                self.terminate()
                with trio.move_on_after(STOP_TIMEOUT):
                    await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            if self.process.stderr is not None:
                await self.process.stderr.aclose()


# -- a daemon per session (plain subprocess) -----------------------------------------------


class SessionHubd:
    """A `hubd serve` subprocess shared by many tests (they use distinct client IPs); a
    thread collects its stderr lines."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.lines: list[str] = []
        self.port = 0
        self.eof = False
        self._ready = threading.Event()
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [HUBD, "serve", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or not self.port:
            self.close()
            raise RuntimeError(f"hubd did not become ready:\n{self.output}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
            if not self.port and (binds := _ready_binds(line)):
                self.port = binds[0][1]
                self._ready.set()
        with self._changed:
            self.eof = True
            self._changed.notify_all()
        self._ready.set()

    def wait_for_line_blocking(
        self, pattern: re.Pattern[str], within: float = WAIT, *, since: int = 0
    ) -> re.Match[str]:
        """`wait_for_line` for code outside trio (a fixture): blocks this thread."""
        seen = since

        def found() -> re.Match[str] | bool:
            nonlocal seen
            for line in self.lines[seen:]:
                if m := pattern.search(line):
                    return m
            seen = len(self.lines)
            return self.eof

        with self._changed:
            result = self._changed.wait_for(found, within)
        if isinstance(result, re.Match):
            return result
        raise AssertionError(
            f"no hubd stderr line matching {pattern.pattern!r} "
            f"({'the process ended' if result else f'within {within} s'}):\n{self.output}"
        )

    async def wait_for_line(
        self, pattern: re.Pattern[str], within: float = WAIT, *, since: int = 0
    ) -> re.Match[str]:
        """Wait until a stderr line from `lines[since]` on matches `pattern` (woken by each
        new line, never a sleep)."""
        return await trio.to_thread.run_sync(
            partial(self.wait_for_line_blocking, pattern, within, since=since),
            abandon_on_cancel=True,
        )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._thread.join(STOP_TIMEOUT)
        if self.process.stderr is not None:
            self.process.stderr.close()


# -- WebSocket clients ---------------------------------------------------------------------


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def raw_connect(
    port: int, src_ip: str | None = None, *, host: str = HOST, rcvbuf: int | None = None
) -> trio.SocketStream:
    """A TCP connection to the server from `src_ip` (a fresh address by default)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.bind((src_ip or client_ip(), 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


@asynccontextmanager
async def ws_connect(
    port: int,
    src_ip: str,
    resource: str = "/v1/ws/subscribe",
    headers: Mapping[str, str] | None = None,
    *,
    host: str = HOST,
    rcvbuf: int | None = None,
    subprotocols: Sequence[str] | None = None,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Open a real WebSocket to the server from `src_ip` (offering `subprotocols`).

    A handshake the server refuses raises `ConnectionRejected` (status, headers, body).
    `rcvbuf` shrinks the socket's receive buffer so that a client which stops reading
    pushes back on the server quickly."""
    stream = await raw_connect(port, src_ip, host=host, rcvbuf=rcvbuf)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(WAIT):
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    authority(host, port),
                    resource,
                    subprotocols=subprotocols,
                    extra_headers=extra,
                )
            try:
                yield ws
            finally:
                with trio.move_on_after(WAIT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise unwrap_group(group) from None
    finally:
        await stream.aclose()


class Subscriber(SubscriberBase):
    """A connected subscriber over a real WebSocket whose confirmation frame has been read."""

    wait = WAIT

    def __init__(self, ws: trio_websocket.WebSocketConnection, ip: str) -> None:
        super().__init__()
        self.ws = ws
        self.ip = ip

    async def recv(self, within: float = WAIT) -> dict[str, Any]:
        with trio.fail_after(within):
            text = await self.ws.get_message()
        assert isinstance(text, str), f"expected a text frame, got {text!r}"
        frame = json.loads(text)
        assert isinstance(frame, dict), text
        return frame

    async def send(self, frame: Any) -> None:
        await self.ws.send_message(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def closed(self, within: float = WAIT) -> trio_websocket.CloseReason:
        """Read (and discard) frames until the server closes; return its close reason."""
        with trio.fail_after(within):
            while True:
                try:
                    await self.ws.get_message()
                except ConnectionClosed as exc:
                    assert exc.reason is not None
                    return exc.reason


@asynccontextmanager
async def subscribe(
    port: int,
    channels: str | Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    ip: str | None = None,
    prefix: str = "/v1",
    access_token: str | None = None,
    host: str = HOST,
    rcvbuf: int | None = None,
) -> AsyncIterator[Subscriber]:
    """Connect (as `sub` unless told otherwise) and read the confirmation frame."""
    src = ip or client_ip()
    if headers is None and access_token is None:
        headers = SUB
    path = subscribe_path(channels, prefix=prefix, access_token=access_token)
    async with ws_connect(port, src, path, headers, host=host, rcvbuf=rcvbuf) as ws:
        sub = Subscriber(ws, src)
        sub.confirmation = await sub.recv()
        assert sub.confirmation["message"] == CONFIRMATION_MESSAGE, sub.confirmation
        yield sub


async def rejected(
    port: int,
    channels: str | Sequence[str] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    ip: str | None = None,
    resource: str | None = None,
    access_token: str | None = None,
    host: str = HOST,
) -> ConnectionRejected:
    """Attempt a subscription that the server must refuse before the upgrade."""
    path = resource or subscribe_path(channels, access_token=access_token)
    with pytest.raises(ConnectionRejected) as info:
        async with ws_connect(port, ip or client_ip(), path, headers, host=host):
            pass
    return info.value


def rejection_error(exc: ConnectionRejected, status: int) -> dict[str, str]:
    """Check a refused handshake: the status and a JSON `{"error", "message"}` body."""
    assert exc.status_code == status, (exc.status_code, exc.body)
    headers = {k.decode().lower(): v.decode() for k, v in exc.headers}
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert exc.body is not None
    return error_object(json.loads(exc.body))


# -- HTTP ----------------------------------------------------------------------------------


@asynccontextmanager
async def http_client(url: str, src_ip: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address=src_ip or client_ip())
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=WAIT) as client:
        yield client


# -- batch mode, compression and stats tests ------------------------------------------------

# Source addresses for tests/e2e/test_batch_and_stats.py: a range (127.31.0.0/16) that no
# other test uses, on the shared servers or elsewhere.
_batch_numbers = itertools.count(1)


def batch_ip() -> str:
    """A fresh loopback source address in 127.31.0.0/16."""
    n = next(_batch_numbers)
    return f"127.31.{n // 250}.{n % 250 + 1}"
