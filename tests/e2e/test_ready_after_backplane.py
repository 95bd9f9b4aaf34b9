"""A cluster node is ready (the `ready` line, `READY=1`, `/v1/ready` 200) only once its
Redis backplane is connected: started while Redis is down, it serves `/v1/health` and
answers `/v1/ready` 503, logs why Redis cannot be reached, and becomes ready after the
`backplane connected` line once Redis is up. A stop signal while it waits ends it
cleanly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import trio

from ..helpers import HOST, assert_json_error, write_config
from ..redis_server import RedisServer, free_port
from .helpers import HUBD, READY, START_TIMEOUT, HubdProcess, http_client

pytestmark = pytest.mark.e2e

UNAVAILABLE = re.compile(
    r"WARNING +hubd\.backplane: backplane unavailable: .+; retrying in \d+\.\d\ds$"
)
CONNECTED = re.compile(r"hubd\.backplane: backplane connected ")


async def start_waiting(
    nursery: trio.Nursery, tmp_path: Path, redis: RedisServer
) -> tuple[HubdProcess, str]:
    """`hubd serve` on a fixed port with Redis down: its stderr followed, not waited
    for its ready line. Returns it and its base URL."""
    redis.stop()
    port = free_port()
    path = write_config(
        tmp_path / "hubd.toml",
        server={"listen": [f"{HOST}:{port}"]},
        backplane={"kind": "redis", "url": redis.url, "prefix": "ready", "lease_seconds": 3.0},
    )
    process = await trio.lowlevel.open_process(
        [HUBD, "serve", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = HubdProcess(process, path)
    nursery.start_soon(server._pump)
    await server.wait_for_line(UNAVAILABLE, within=START_TIMEOUT)
    return server, f"http://{HOST}:{port}"


async def test_ready_comes_after_the_backplane_connects(
    nursery: trio.Nursery, tmp_path: Path, own_redis: RedisServer
) -> None:
    server, url = await start_waiting(nursery, tmp_path, own_redis)
    try:
        async with http_client(url) as http:
            assert (await http.get("/v1/health")).status_code == 200
            body = assert_json_error(await http.get("/v1/ready"), 503)
            assert body == {"error": "not_ready", "message": "the server is starting"}
            assert not any(READY.search(line) for line in server.lines), server.output

            own_redis.start()
            await server.wait_for_line(READY, within=START_TIMEOUT)
            assert (await http.get("/v1/ready")).status_code == 200
        connected = next(i for i, line in enumerate(server.lines) if CONNECTED.search(line))
        ready = next(i for i, line in enumerate(server.lines) if READY.search(line))
        assert connected < ready, server.output
        # The line that says Redis is back says for how long it was not.
        assert re.search(r" down_seconds=\d+\.\d failed_attempts=\d+$", server.lines[connected])
    finally:
        await server.aclose()
    assert server.process.returncode == 0
    assert "Traceback" not in server.output


async def test_a_stop_while_waiting_for_the_backplane_ends_cleanly(
    nursery: trio.Nursery, tmp_path: Path, own_redis: RedisServer
) -> None:
    server, _ = await start_waiting(nursery, tmp_path, own_redis)
    try:
        server.terminate()
        assert await server.wait_exit(START_TIMEOUT) == 0
        await server.wait_eof()
    finally:
        await server.aclose()
    assert not any(READY.search(line) for line in server.lines), server.output
    assert re.search(r"\bstopped$", server.lines[-1]), server.output
    assert "Traceback" not in server.output
