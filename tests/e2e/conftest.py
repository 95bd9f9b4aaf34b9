"""Fixtures for the end-to-end tests: real `hubd serve` processes on ephemeral ports.

- `hub_server` / `idle_server`: one daemon each for the whole session (started on first
  use). Tests sharing them stay independent by connecting from source addresses no other
  test uses.
- `shared_hubd(tmp_path_factory, name, **sections)`: the same for a module-scoped fixture of
  a test file whose tests share a config but need a daemon apart from the others.
- `start_hubd`: a factory for daemons owned by one test (SIGTERM, SIGHUP, restarts, process
  limits, their own log); every one of them is stopped and reaped at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from ..helpers import shared_sections, write_config
from .helpers import TRUSTED_PROXY_NET, HubdProcess, SessionHubd, http_client

# The idle deadline of the shared `idle_server`.
IDLE_TIMEOUT = 0.4

StartHubd = Callable[..., Awaitable[HubdProcess]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: end-to-end test against a real `hubd serve` subprocess"
    )


@contextmanager
def shared_hubd(
    tmp_path_factory: pytest.TempPathFactory, name: str, **sections: Mapping[str, Any]
) -> Iterator[SessionHubd]:
    """A daemon on `config_for(**sections)` for as long as the block runs."""
    path = write_config(tmp_path_factory.mktemp("hubd") / f"{name}.toml", **sections)
    server = SessionHubd(path)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    """The shared daemon: an extra channel, small frame and publish limits, and a trusted
    proxy range (127.77.0.0/16) that ordinary test clients never connect from."""
    with shared_hubd(tmp_path_factory, "hub", **shared_sections(TRUSTED_PROXY_NET)) as server:
        yield server


@pytest.fixture(scope="session")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    """A shared daemon whose idle deadline is short enough to wait for. Its client frame
    rate limit is far above the default: heartbeat tests send frames back to back (each
    after the previous reply) for several deadlines, thousands per second."""
    hub = {
        "idle_timeout": IDLE_TIMEOUT,
        "max_client_frames_per_second": 1_000_000.0,
        "client_frames_burst": 1_000_000,
    }
    with shared_hubd(tmp_path_factory, "idle", hub=hub) as server:
        yield server


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
        path = write_config(tmp_path / f"hubd-{len(started)}.toml", **sections)
        server = await HubdProcess.start(nursery, path)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.aclose()
