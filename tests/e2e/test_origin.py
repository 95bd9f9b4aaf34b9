"""Browser origins on a real daemon: `server.allowed_origins` changes on SIGHUP. Which
Origin is admitted with each setting (and the 403 `forbidden_origin` refusal) is in
tests/web/test_subscribe_handshake.py; the check-config refusals of bad entries in
tests/web/test_check_config.py."""

from __future__ import annotations

import re
import signal

import pytest

from ..helpers import SUB, write_config
from .conftest import StartHubd
from .helpers import HubdProcess, rejected, rejection_error, subscribe

pytestmark = pytest.mark.e2e

EVIL = "https://evil.example"
OPS = "https://ops.example.com"


def origin(value: str) -> dict[str, str]:
    return {**SUB, "Origin": value}


async def test_allowed_origins_change_on_reload(start_hubd: StartHubd) -> None:
    server: HubdProcess = await start_hubd()
    error = rejection_error(await rejected(server.port, "pdfm", origin(OPS)), 403)
    assert error["error"] == "forbidden_origin", error
    write_config(server.config_path, server={"allowed_origins": [OPS]})
    server.process.send_signal(signal.SIGHUP)
    await server.wait_for_line(re.compile(r"\breloaded\b"))
    async with subscribe(server.port, "pdfm", origin(OPS)) as sub:
        assert sub.subscriptions == ["pdfm", "global"]
    error = rejection_error(await rejected(server.port, "pdfm", origin(EVIL)), 403)
    assert error["error"] == "forbidden_origin", error
