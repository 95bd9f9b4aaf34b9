"""Browser origins on the subscribe handshake: without `server.allowed_origins` only
same-origin pages (and clients sending no Origin) may connect; with a list only those
origins, or any with "*". A refused Origin gets 403 `forbidden_origin` before the upgrade."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from .conftest import StartHubd
from .helpers import (
    HOST,
    HUBD,
    SUB,
    HubdProcess,
    SessionHubd,
    config_for,
    rejected,
    rejection_error,
    render_config,
    subscribe,
)

pytestmark = pytest.mark.e2e

EVIL = "https://evil.example"
OPS = "https://ops.example.com"


def origin(value: str) -> dict[str, str]:
    return {**SUB, "Origin": value}


async def assert_connects(port: int, value: str | None) -> None:
    headers = SUB if value is None else origin(value)
    async with subscribe(port, "pdfm", headers) as sub:
        assert sub.subscriptions == ["pdfm", "global"]


async def assert_forbidden(port: int, value: str) -> str:
    """The handshake with this Origin is refused with 403 forbidden_origin; the message."""
    error = rejection_error(await rejected(port, "pdfm", origin(value)), 403)
    assert error["error"] == "forbidden_origin", error
    assert value in error["message"], error
    return error["message"]


async def test_default_admits_no_origin_and_same_origin_only(hub_server: SessionHubd) -> None:
    port = hub_server.port
    await assert_connects(port, None)
    await assert_connects(port, f"http://{HOST}:{port}")
    message = await assert_forbidden(port, EVIL)
    assert "same-origin" in message
    await assert_forbidden(port, f"http://{HOST}:{port + 1}")  # another port
    await assert_forbidden(port, "http://localhost")  # another host
    await assert_forbidden(port, "null")  # an opaque origin (file://, sandboxed frame)


async def test_listed_origins_only(start_hubd: StartHubd) -> None:
    server = await start_hubd(server={"allowed_origins": [OPS]})
    await assert_connects(server.port, OPS)
    await assert_connects(server.port, "HTTPS://OPS.example.com/")  # case and trailing /
    await assert_connects(server.port, None)
    message = await assert_forbidden(server.port, EVIL)
    assert OPS in message
    # With a list, the page's own origin is not allowed unless listed.
    await assert_forbidden(server.port, f"http://{HOST}:{server.port}")
    await assert_forbidden(server.port, "http://ops.example.com")  # another scheme
    await assert_forbidden(server.port, "https://ops.example.com:8443")  # another port


async def test_star_admits_any_origin(start_hubd: StartHubd) -> None:
    server = await start_hubd(server={"allowed_origins": ["*"]})
    for value in (EVIL, OPS, "null", f"http://{HOST}:{server.port}"):
        await assert_connects(server.port, value)
    await assert_connects(server.port, None)


async def test_allowed_origins_change_on_reload(start_hubd: StartHubd) -> None:
    server: HubdProcess = await start_hubd()
    await assert_forbidden(server.port, OPS)
    config = config_for(server={"allowed_origins": [OPS]})
    server.config_path.write_text(render_config(config), encoding="utf-8")
    server.process.send_signal(signal.SIGHUP)
    await server.wait_for_line(re.compile(r"\breloaded\b"))
    await assert_connects(server.port, OPS)
    await assert_forbidden(server.port, EVIL)


@pytest.mark.parametrize(
    ("origins", "key"),
    [
        pytest.param(["https://ops.example.com/console"], "server.allowed_origins[0]", id="path"),
        pytest.param([OPS, "ops.example.com"], "server.allowed_origins[1]", id="no-scheme"),
        pytest.param(["ftp://ops.example.com"], "server.allowed_origins[0]", id="scheme"),
        pytest.param([OPS, OPS], "server.allowed_origins", id="twice"),
    ],
)
def test_check_config_refuses_a_bad_allowed_origin(
    tmp_path: Path, origins: list[str], key: str
) -> None:
    path = tmp_path / "origins.toml"
    path.write_text(
        render_config(config_for(server={"allowed_origins": origins})), encoding="utf-8"
    )
    result = subprocess.run(
        [HUBD, "check-config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert key in result.stderr, result.stderr
