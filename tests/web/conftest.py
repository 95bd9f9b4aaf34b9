"""Fixtures for the in-process web tests: `hubd` (the app over the shared test config) and
`make_hubd` (the app over that config with sections changed, for one test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest

from ..helpers import shared_sections
from .asgi import InProcessHubd, build_hubd, settings_for

# Inside the shared config's trusted proxy range; ordinary clients (`asgi.client_ip`) come
# from 10.20.0.0/16.
TRUSTED_PROXY_NET = "10.77.0.0/16"

MakeHubd = Callable[..., InProcessHubd]


@pytest.fixture
def make_hubd() -> MakeHubd:
    """`make_hubd(hub={...}, limits={...})`: the shared config with those keys changed.
    Call it inside the test (the hub needs a running trio loop)."""

    def make(**sections: Mapping[str, Any]) -> InProcessHubd:
        merged = shared_sections(TRUSTED_PROXY_NET)
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
