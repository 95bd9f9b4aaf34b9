"""TLS: with `server.tls_cert` / `server.tls_key` every listener serves https and wss
(certificates from a throwaway trustme CA), plain HTTP is refused, and a missing,
garbage or mismatched file stops `hubd serve` at start with exit 2 naming the key
(`hubd check-config` loads them too: tests/web/test_check_config.py)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
import trustme

from ..helpers import (
    CONFIRMATION_MESSAGE,
    HOST,
    PUB,
    SUB,
    event,
    issue_certificate,
    subscribe_path,
    write_config,
)
from .conftest import StartHubd
from .helpers import HUBD, WAIT, Subscriber, authority, client_ip, raw_connect

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def https_client(
    port: int, verify: ssl.SSLContext | bool
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(verify=verify, local_address=client_ip())
    async with httpx.AsyncClient(
        base_url=f"https://{HOST}:{port}", transport=transport, timeout=WAIT
    ) as client:
        yield client


@asynccontextmanager
async def wss_subscribe(
    port: int, context: ssl.SSLContext, channels: str, headers: dict[str, str]
) -> AsyncIterator[Subscriber]:
    """A wss subscription over TLS (verified against `context`); the confirmation is read."""
    ip = client_ip()
    stream = trio.SSLStream(await raw_connect(port, ip), context, server_hostname=HOST)
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(WAIT):
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    authority(HOST, port),
                    subscribe_path(channels),
                    extra_headers=extra,
                )
            sub = Subscriber(ws, ip)
            sub.confirmation = await sub.recv()
            assert sub.confirmation["message"] == CONFIRMATION_MESSAGE, sub.confirmation
            try:
                yield sub
            finally:
                with trio.move_on_after(WAIT):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


async def test_https_and_wss_with_a_trusted_certificate(
    start_hubd: StartHubd, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = issue_certificate(ca, tmp_path)
    server = await start_hubd(server={"tls_cert": str(cert), "tls_key": str(key)})
    assert f"ready listening=https://{HOST}:{server.port}" in server.output
    context = trusting(ca)
    async with https_client(server.port, context) as https:
        health = await https.get("/v1/health")
        assert health.status_code == 200, health.text
        async with wss_subscribe(server.port, context, "pdfm,health", SUB) as sub:
            assert sub.subscriptions == ["pdfm", "health", "global"]
            response = await https.post(
                "/v1/events", json=event("pdfm", "OVER_TLS", body={"vm": "vm-1"}), headers=PUB
            )
            assert response.status_code == 202, response.text
            got = await sub.recv()
            assert got["id"] == response.json()["id"]
            assert (got["event_type"], got["message"], got["body"]) == (
                "pdfm",
                "OVER_TLS",
                {"vm": "vm-1"},
            )
            pong = await sub.request({"event_type": "health", "message": "ping", "id": "p1"})
            assert pong["ref_id"] == "p1"


async def test_plain_http_and_untrusted_clients_are_refused(
    start_hubd: StartHubd, ca: trustme.CA, tmp_path: Path
) -> None:
    cert, key = issue_certificate(ca, tmp_path)
    server = await start_hubd(server={"tls_cert": str(cert), "tls_key": str(key)})
    transport = httpx.AsyncHTTPTransport(local_address=client_ip())
    async with httpx.AsyncClient(transport=transport, timeout=WAIT) as plain:
        with pytest.raises(httpx.TransportError):
            await plain.get(f"http://{HOST}:{server.port}/v1/health")
    # The system trust store does not know the throwaway CA.
    async with https_client(server.port, True) as untrusted:
        with pytest.raises(httpx.ConnectError):
            await untrusted.get("/v1/health")
    # The daemon is unharmed and still serves TLS.
    async with https_client(server.port, trusting(ca)) as https:
        assert (await https.get("/v1/health")).status_code == 200
    assert server.process.returncode is None


# -- bad TLS files ---------------------------------------------------------------------------


def serve(tmp_path: Path, **server: Any) -> subprocess.CompletedProcess[str]:
    """`hubd serve` on a config with these [server] keys; it must exit by itself."""
    path = write_config(tmp_path / "tls.toml", server=server)
    return subprocess.run(
        [HUBD, "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert "ready" not in result.stderr
    for text in mentions:
        assert text in result.stderr, result.stderr


def test_missing_key_file_exits_2_naming_tls_key(ca: trustme.CA, tmp_path: Path) -> None:
    cert, _ = issue_certificate(ca, tmp_path)
    missing = tmp_path / "no-such-key.pem"
    result = serve(tmp_path, tls_cert=str(cert), tls_key=str(missing))
    assert_refused(result, "server.tls_key", str(missing))


def test_missing_cert_file_exits_2_naming_tls_cert(ca: trustme.CA, tmp_path: Path) -> None:
    _, key = issue_certificate(ca, tmp_path)
    missing = tmp_path / "no-such-cert.pem"
    result = serve(tmp_path, tls_cert=str(missing), tls_key=str(key))
    assert_refused(result, "server.tls_cert", str(missing))


def test_key_of_another_certificate_exits_2_naming_tls_cert(ca: trustme.CA, tmp_path: Path) -> None:
    cert, _ = issue_certificate(ca, tmp_path, "one")
    _, other_key = issue_certificate(ca, tmp_path, "other")
    result = serve(tmp_path, tls_cert=str(cert), tls_key=str(other_key))
    assert_refused(result, "server.tls_cert", str(cert))


@pytest.mark.parametrize("garbage", ["cert", "key"])
def test_garbage_pem_exits_2_naming_tls_cert(ca: trustme.CA, tmp_path: Path, garbage: str) -> None:
    cert, key = issue_certificate(ca, tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n", encoding="utf-8")
    paths = {"tls_cert": str(cert), "tls_key": str(key), f"tls_{garbage}": str(junk)}
    result = serve(tmp_path, **paths)
    assert_refused(result, "server.tls_cert", str(junk))
