"""Fixtures for the in-process web tests: `hubd` (the app over the shared test config) and
`make_hubd` (the app over that config with sections changed, for one test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest

from .asgi import InProcessHubd, build_hubd, settings_for

# Settings of the `hubd` fixture that tests rely on (those of the end-to-end hub_server).
EXTRA_CHANNEL = "builds"
MAX_MESSAGE_BYTES = 4096
MAX_PUBLISH_BYTES = 262144
TRUSTED_PROXY_NET = "10.77.0.0/16"

MakeHubd = Callable[..., InProcessHubd]


def shared_sections() -> dict[str, dict[str, Any]]:
    return {
        "hub": {
            "channels": [EXTRA_CHANNEL],
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_publish_bytes": MAX_PUBLISH_BYTES,
        },
        "limits": {"trusted_proxies": [TRUSTED_PROXY_NET]},
    }


@pytest.fixture
def make_hubd() -> MakeHubd:
    """`make_hubd(hub={...}, limits={...})`: the shared config with those keys changed.
    Call it inside the test (the hub needs a running trio loop)."""

    def make(**sections: Mapping[str, Any]) -> InProcessHubd:
        merged = shared_sections()
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        return build_hubd(settings_for(**merged))

    return make


@pytest.fixture
async def hubd(make_hubd: MakeHubd) -> InProcessHubd:
    return make_hubd()


@pytest.fixture
async def http(hubd: InProcessHubd) -> AsyncIterator[httpx.AsyncClient]:
    async with hubd.http() as client:
        yield client
