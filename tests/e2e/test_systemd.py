"""`hubd serve` under systemd's protocols, played by the test: a fake $NOTIFY_SOCKET that
records every sd_notify datagram (READY, WATCHDOG, RELOADING, STOPPING), and socket
activation with a listening socket the test owns and passes as fd 3."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ..helpers import HOST, PUB, event, write_config
from ..redis_server import free_port
from .helpers import (
    BIND,
    STOP_TIMEOUT,
    WAIT,
    HubdProcess,
    client_ip,
    http_client,
    raw_connect,
    subscribe,
)

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT = 3.0
WATCHDOG_USEC = 200_000  # pings every 0.1 s
RELOADED = re.compile(r"\breloaded\b")
STARTING = re.compile(r"\bstarting\b.*\bactivated=(\w+)")
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without systemd's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
    env.pop("LISTEN_FDNAMES", None)
    return {**env, **extra}


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, the clock of MONOTONIC_USEC (the same in every process)."""
    return time.monotonic_ns() // 1000


@asynccontextmanager
async def running(
    nursery: trio.Nursery,
    config_path: Path,
    *,
    env: Mapping[str, str],
    launcher: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
) -> AsyncIterator[HubdProcess]:
    """A `hubd serve` started with `env`, stopped and reaped when the block ends."""
    server = await HubdProcess.start(
        nursery, config_path, env=env, launcher=launcher, pass_fds=pass_fds
    )
    try:
        yield server
    finally:
        await server.aclose()


# -- sd_notify -------------------------------------------------------------------------------


Message = list[str]  # one datagram, split into its "KEY=value" lines


class NotifyReceiver:
    """A fake $NOTIFY_SOCKET: every datagram received, in order, with its receive time.

    `on_first_ready` runs inside the receive loop as soon as the first READY=1 arrives,
    before anything else is read: "at that moment"."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        on_first_ready: Callable[[Message], Awaitable[Any]] | None,
    ) -> None:
        self.sock = sock
        self.messages: list[Message] = []
        self.received_at: list[int] = []
        self.on_first_ready = on_first_ready
        self.first_ready_result: Any = None
        self._changed = trio.Event()

    @classmethod
    async def bind(
        cls, path: Path, on_first_ready: Callable[[Message], Awaitable[Any]] | None = None
    ) -> NotifyReceiver:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        await sock.bind(str(path))
        return cls(sock, on_first_ready)

    async def run(self) -> None:
        with self.sock:
            while True:
                data = await self.sock.recv(65536)
                message = data.decode().split("\n")
                if "READY=1" in message and self.on_first_ready is not None:
                    hook, self.on_first_ready = self.on_first_ready, None
                    self.first_ready_result = await hook(message)
                self.messages.append(message)
                self.received_at.append(monotonic_usec())
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(
        self, predicate: Callable[[Message], bool], start: int = 0, within: float = WAIT
    ) -> int:
        """The index of the first message from `start` on that matches `predicate`."""
        with trio.fail_after(within):
            while True:
                for i in range(start, len(self.messages)):
                    if predicate(self.messages[i]):
                        return i
                await self._changed.wait()

    def states(self, start: int = 0) -> list[str]:
        """Every KEY=value sent from message `start` on, flattened."""
        return [line for message in self.messages[start:] for line in message]


def has(state: str) -> Callable[[Message], bool]:
    return lambda message: state in message


def status_port(message: Message) -> int:
    """The port named by `STATUS=serving on http://127.0.0.1:PORT`."""
    status = [line for line in message if line.startswith("STATUS=")]
    assert status, message
    found = BIND.search(status[0])
    assert found, message
    return int(found.group(3))


async def health_status(message: Message) -> int:
    """GET /v1/health on the port that READY=1's STATUS names."""
    async with http_client(f"http://{HOST}:{status_port(message)}") as http:
        return (await http.get("/v1/health")).status_code


async def test_notify_ready_watchdog_reload_stopping(nursery: trio.Nursery, tmp_path: Path) -> None:
    receiver = await NotifyReceiver.bind(tmp_path / "notify.sock", on_first_ready=health_status)
    nursery.start_soon(receiver.run)
    env = child_env(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC=str(WATCHDOG_USEC))
    config = write_config(tmp_path / "hubd.toml", server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    async with running(nursery, config, env=env) as server:
        # READY=1 comes first, once the HTTP port answers, and names what it serves.
        ready = await receiver.wait_for(has("READY=1"))
        assert ready == 0, receiver.messages
        assert receiver.first_ready_result == 200
        assert status_port(receiver.messages[0]) == server.port

        # WATCHDOG=1 every WATCHDOG_USEC / 2, each its own datagram.
        seen = 0
        for _ in range(3):
            seen = await receiver.wait_for(lambda m: m == ["WATCHDOG=1"], seen + 1)

        # SIGHUP: RELOADING=1 with the monotonic time of the reload, then READY=1 again.
        start = len(receiver.messages)
        before = monotonic_usec()
        server.process.send_signal(signal.SIGHUP)
        reloading = await receiver.wait_for(has("RELOADING=1"), start)
        message = receiver.messages[reloading]
        stamps = [line for line in message if line.startswith("MONOTONIC_USEC=")]
        assert len(stamps) == 1, message
        assert (
            before
            <= int(stamps[0].removeprefix("MONOTONIC_USEC="))
            <= (receiver.received_at[reloading])
        ), (before, message, receiver.received_at[reloading])
        await receiver.wait_for(has("READY=1"), reloading + 1)
        await server.wait_for_line(RELOADED)

        # SIGTERM: STOPPING=1 while draining, then exit 0.
        start = len(receiver.messages)
        server.terminate()
        stopping = await receiver.wait_for(has("STOPPING=1"), start)
        assert await server.wait_exit(STOP_TIMEOUT) == 0
        assert "READY=1" not in receiver.states(stopping)
        assert "Traceback" not in server.output
        assert "NOTIFY_SOCKET" not in server.output  # no send failed


async def test_no_watchdog_pings_for_another_process_and_stopping_still_sent(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """WATCHDOG_PID naming another process: READY/RELOADING/STOPPING, but no WATCHDOG=1 even
    at a 10 ms interval over a whole reload."""
    receiver = await NotifyReceiver.bind(tmp_path / "notify.sock")
    nursery.start_soon(receiver.run)
    env = child_env(
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="20000", WATCHDOG_PID="1"
    )
    config = write_config(tmp_path / "hubd.toml", server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    async with running(nursery, config, env=env) as server:
        await receiver.wait_for(has("READY=1"))
        server.process.send_signal(signal.SIGHUP)
        reloading = await receiver.wait_for(has("RELOADING=1"))
        await receiver.wait_for(has("READY=1"), reloading + 1)
        server.terminate()
        await receiver.wait_for(has("STOPPING=1"))
        assert await server.wait_exit(STOP_TIMEOUT) == 0
    assert "WATCHDOG=1" not in receiver.states(), receiver.messages


async def test_unreachable_notify_socket_does_not_stop_hubd(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    env = child_env(NOTIFY_SOCKET=str(tmp_path / "nobody.sock"), WATCHDOG_USEC="20000")
    config = write_config(tmp_path / "hubd.toml", server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    async with running(nursery, config, env=env) as server:
        async with http_client(server.url) as http:
            assert (await http.get("/v1/health")).status_code == 200
        server.terminate()
        assert await server.wait_exit(STOP_TIMEOUT) == 0
    warnings = [line for line in server.lines if "NOTIFY_SOCKET" in line]
    assert len(warnings) == 1, server.output  # one warning, however many pings failed
    assert "Traceback" not in server.output


# -- socket activation ---------------------------------------------------------------------

# Runs as the process systemd would start: moves the inherited socket to fd 3, announces it
# for its own pid (kept by exec) and execs hubd with the remaining arguments.
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""

HEALTH_REQUEST = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def queued_health_request(port: int) -> trio.SocketStream:
    """A connection whose whole request is sent before anyone accepts it: it waits in the
    listening socket's backlog."""
    stream = await raw_connect(port, client_ip())
    await stream.send_all(HEALTH_REQUEST)
    return stream


async def response_to(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(WAIT):
        async with stream:
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def assert_refused(port: int) -> None:
    sock = trio.socket.socket()
    with sock, pytest.raises(ConnectionRefusedError):
        await sock.connect((HOST, port))


async def test_socket_activation_serves_the_passed_socket_and_queues_across_a_restart(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    configured = free_port()
    config = write_config(
        tmp_path / "hubd.toml",
        server={"listen": [f"{HOST}:{configured}"], "shutdown_timeout": SHUTDOWN_TIMEOUT},
        hub={"idle_timeout": 30.0},
    )
    start: dict[str, Any] = {
        "env": child_env(),
        "launcher": [sys.executable, "-c", LAUNCHER, str(listener.fileno())],
        "pass_fds": [listener.fileno()],
    }
    with listener:
        early = await queued_health_request(port)  # before any hubd runs
        async with running(nursery, config, **start) as server:
            assert server.binds == [(HOST, port)], server.output
            starting = await server.wait_for_line(STARTING)
            assert starting.group(1).lower() == "true", starting.string
            assert "LISTEN_FDS is set for process" not in server.output

            # The connection made while nothing served gets its answer.
            answer = await response_to(early)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert b'"status":"ok"' in answer

            # server.listen is not bound when a socket is passed.
            await assert_refused(configured)

            # Subscribe and publish over the passed socket.
            async with subscribe(port, "pdfm") as sub, http_client(server.url) as http:
                response = await http.post("/v1/events", json=event(), headers=PUB)
                assert response.status_code == 202, response.text
                got, _ = await sub.until(lambda e: e["id"] == response.json()["id"])
                assert got["message"] == "VM_STATE_CHANGED"

            # Accepted connections get the same TCP_USER_TIMEOUT as a socket hubd binds.
            user_timeout = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert user_timeout == 30_000

            server.terminate()
            assert await server.wait_exit(STOP_TIMEOUT) == 0
            assert "Traceback" not in server.output

        # A restart: connections made while no hubd runs wait in the backlog...
        during_restart = await queued_health_request(port)
        async with running(nursery, config, **start) as again:
            assert again.binds == [(HOST, port)], again.output
            # ...and are served by the next hubd, not refused.
            answer = await response_to(during_restart)
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            again.terminate()
            assert await again.wait_exit(STOP_TIMEOUT) == 0
            assert "Traceback" not in again.output
