"""Fixtures for the end-to-end tests: real `hubd serve` processes on ephemeral ports.

- `hub_server` / `idle_server`: one daemon each for the whole session (started on first
  use). Tests sharing them stay independent by connecting from source addresses no other
  test uses.
- `start_hubd`: a factory for daemons owned by one test (special limits, SIGTERM, slow
  consumers); every one of them is stopped and reaped at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .helpers import (
    TRUSTED_PROXY_NET,
    HubdProcess,
    SessionHubd,
    config_for,
    http_client,
    render_config,
)

# Settings of the shared `hub_server` that tests rely on.
EXTRA_CHANNEL = "builds"
MAX_MESSAGE_BYTES = 4096
MAX_PUBLISH_BYTES = 262144
IDLE_TIMEOUT = 0.4

StartHubd = Callable[..., Awaitable[HubdProcess]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test against a real `hubd serve` subprocess"
    )


def _write_config(directory: Path, name: str, config: dict[str, Any]) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(render_config(config), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    """The shared daemon: an extra channel, small frame and publish limits, and a trusted
    proxy range (127.77.0.0/16) that ordinary test clients never connect from."""
    config = config_for(
        hub={
            "channels": [EXTRA_CHANNEL],
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_publish_bytes": MAX_PUBLISH_BYTES,
        },
        limits={"trusted_proxies": [TRUSTED_PROXY_NET]},
    )
    server = SessionHubd(_write_config(tmp_path_factory.mktemp("hubd"), "hub", config))
    yield server
    server.close()


@pytest.fixture(scope="session")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    """A shared daemon whose idle deadline is short enough to wait for. Its client frame
    rate limit is far above the default: heartbeat tests send frames back to back (each
    after the previous reply) for several deadlines, thousands per second."""
    config = config_for(
        hub={
            "idle_timeout": IDLE_TIMEOUT,
            "max_client_frames_per_second": 1_000_000.0,
            "client_frames_burst": 1_000_000,
        }
    )
    server = SessionHubd(_write_config(tmp_path_factory.mktemp("hubd"), "idle", config))
    yield server
    server.close()


@pytest.fixture
async def http(hub_server: SessionHubd) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the shared daemon."""
    async with http_client(hub_server.url) as client:
        yield client


@pytest.fixture
async def start_hubd(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[StartHubd]:
    """`await start_hubd(hub={...}, limits={...})` runs a daemon for this test only."""
    started: list[HubdProcess] = []

    async def start(**sections: dict[str, Any]) -> HubdProcess:
        path = _write_config(tmp_path, f"hubd-{len(started)}", config_for(**sections))
        server = await HubdProcess.start(nursery, path)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.aclose()
