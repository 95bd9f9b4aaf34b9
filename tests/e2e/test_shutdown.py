"""SIGTERM/SIGINT: refuse new connections (503), close every WebSocket with 1001
'server shutting down', exit 0 within `server.shutdown_timeout`."""

from __future__ import annotations

import re
import signal

import pytest
import trio

from ..helpers import ADMIN, PUB, assert_json_error, event
from .conftest import StartHubd
from .helpers import HubdProcess, http_client, rejected, rejection_error, subscribe

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT = 3.0
DRAINING = re.compile(r"\bdraining signal=SIG")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_websockets_1001_and_exits_0(
    start_hubd: StartHubd, signum: signal.Signals
) -> None:
    server = await start_hubd(server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    port = server.port
    async with (
        subscribe(port) as a,
        subscribe(port, "pdfm,health") as b,
        subscribe(port, "orchestrator", ADMIN) as c,
    ):
        server.process.send_signal(signum)
        for client in (a, b, c):
            reason = await client.closed()
            assert (reason.code, reason.reason) == (1001, "server shutting down")
    assert await server.wait_exit(SHUTDOWN_TIMEOUT) == 0
    assert "Traceback" not in server.output


async def test_sigterm_without_connections_exits_0(start_hubd: StartHubd) -> None:
    server = await start_hubd(server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    server.terminate()
    assert await server.wait_exit(SHUTDOWN_TIMEOUT) == 0
    assert "Traceback" not in server.output


async def test_events_queued_before_sigterm_are_flushed_before_1001(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd(server={"shutdown_timeout": SHUTDOWN_TIMEOUT})
    async with http_client(server.url) as http, subscribe(server.port, "pdfm") as client:
        response = await http.post(
            "/v1/events", json=[event(body=i) for i in range(100)], headers=PUB
        )
        assert response.status_code == 202
        server.terminate()
        got = [(await client.recv())["body"] for _ in range(100)]
        assert got == list(range(100))
        reason = await client.closed()
        assert (reason.code, reason.reason) == (1001, "server shutting down")
    assert await server.wait_exit(SHUTDOWN_TIMEOUT) == 0


async def stuck_subscriber_server(start_hubd: StartHubd) -> HubdProcess:
    return await start_hubd(
        server={"shutdown_timeout": SHUTDOWN_TIMEOUT},
        hub={"queue_size": 1000, "max_publish_bytes": 4_000_000},
    )


async def fill_socket_buffers(url: str) -> None:
    """Publish ~10 MB of pdfm events: more than the kernel buffers of a client that does
    not read, so the server's writer for it is blocked on the socket."""
    async with http_client(url) as http:
        for start in range(0, 200, 20):
            batch = [event(body={"seq": s, "pad": "x" * 50_000}) for s in range(start, start + 20)]
            response = await http.post("/v1/events", json=batch, headers=PUB)
            assert response.status_code == 202, response.text


async def test_503_while_draining(start_hubd: StartHubd) -> None:
    """A client that is still being flushed keeps the server draining; meanwhile new
    subscribers are refused with 503 and /v1/ready says 503 not_ready, while /v1/health and
    /metrics still answer. Once the client reads, it gets everything, then 1001."""
    server = await stuck_subscriber_server(start_hubd)
    async with subscribe(server.port, "pdfm", rcvbuf=32 * 1024) as stuck:
        await fill_socket_buffers(server.url)
        server.terminate()
        await server.wait_for_line(DRAINING)
        exc = await rejected(server.port, "pdfm", ADMIN)
        assert rejection_error(exc, 503)["message"]
        async with http_client(server.url) as fresh:
            for prefix in ("/v1", "/api/v1"):
                error = assert_json_error(await fresh.get(f"{prefix}/ready"), 503)
                assert error["error"] == "not_ready" and "draining" in error["message"]
            assert (await fresh.get("/v1/health")).json()["status"] == "ok"
            metrics = await fresh.get("/metrics", headers=ADMIN)
            assert metrics.status_code == 200, metrics.text
            assert re.search(r"^hubd_draining 1(\.0)?$", metrics.text, re.M), metrics.text
            assert re.search(r"^hubd_connections_open 1(\.0)?$", metrics.text, re.M)
        # Catch up: every queued event, then the close.
        seqs: list[int] = []
        with trio.fail_after(30):
            while len(seqs) < 200:
                seqs.append((await stuck.recv())["body"]["seq"])
        assert seqs == list(range(200))
        reason = await stuck.closed()
        assert (reason.code, reason.reason) == (1001, "server shutting down")
    assert await server.wait_exit(SHUTDOWN_TIMEOUT + 5) == 0


async def test_client_that_never_reads_cannot_block_shutdown(start_hubd: StartHubd) -> None:
    server = await start_hubd(
        server={"shutdown_timeout": 0.5},
        hub={"queue_size": 1000, "max_publish_bytes": 4_000_000},
    )
    async with subscribe(server.port, "pdfm", rcvbuf=32 * 1024):
        await fill_socket_buffers(server.url)
        server.terminate()
        # Generous: the drain deadline (0.5 s) plus Hypercorn's own grace (1 s) and slack.
        code = await server.wait_exit(0.5 + 3.5)
    assert code == 0, "hubd did not exit after SIGTERM; it was killed"
