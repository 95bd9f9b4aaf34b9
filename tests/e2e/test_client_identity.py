"""Which client a connection counts as, on a real daemon: only the header named by
`limits.client_ip_header` is read, and only from a trusted proxy; X-Forwarded-For is read
from its end only, however long; IPv6 clients count per `limits.ipv6_prefix` network and
zone ids do not make new clients; a reload switches the header. (Which hop of a trusted
proxy's headers names the client is also checked in process, in
tests/web/test_subscribe_handshake.py.)"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest

from ..helpers import SUB, write_config
from .conftest import StartHubd, shared_hubd
from .helpers import TRUSTED_PROXY_NET, SessionHubd, proxy_ip, rejected, rejection_error, subscribe

pytestmark = pytest.mark.e2e

# Mirrors hubd.core.clientip.MAX_HOPS (the e2e tests see hubd only from outside).
MAX_HOPS = 8


def xff(value: str) -> dict[str, str]:
    return {**SUB, "X-Forwarded-For": value}


def real_ip(value: str) -> dict[str, str]:
    return {**SUB, "X-Real-IP": value}


def trusted_hops(n: int) -> list[str]:
    """`n` addresses inside the shared server's trusted proxy range (never used as peers:
    they only appear in headers)."""
    return [f"127.77.250.{i + 1}" for i in range(n)]


async def test_x_real_ip_names_the_client_when_configured(start_hubd: StartHubd) -> None:
    server = await start_hubd(
        limits={"trusted_proxies": [TRUSTED_PROXY_NET], "client_ip_header": "x-real-ip"}
    )
    proxy = proxy_ip()
    async with (
        subscribe(server.port, "pdfm", real_ip("203.0.113.80"), ip=proxy),
        subscribe(server.port, "pdfm", real_ip("203.0.113.81"), ip=proxy),
    ):
        exc = await rejected(server.port, "pdfm", real_ip("203.0.113.80"), ip=proxy_ip())
        assert "client IP 203.0.113.80 " in rejection_error(exc, 409)["message"]
        # X-Forwarded-For is not read at all now: this counts as the proxy itself.
        async with subscribe(server.port, "pdfm", xff("203.0.113.82"), ip=proxy):
            exc = await rejected(server.port, "pdfm", xff("203.0.113.83"), ip=proxy)
            rejection_error(exc, 409)


async def test_a_60_kb_x_forwarded_for_is_read_from_its_end(hub_server: SessionHubd) -> None:
    port = hub_server.port
    proxy = proxy_ip()
    # What a client wrote (thousands of spoofed hops), then what the proxies appended.
    chain = ", ".join(["198.51.100.90"] * 4000 + ["203.0.113.90", *trusted_hops(3)])
    assert len(chain) > 60000
    async with subscribe(port, "pdfm", xff(chain), ip=proxy):
        exc = await rejected(port, "pdfm", xff("203.0.113.90"), ip=proxy_ip())
        assert "client IP 203.0.113.90 " in rejection_error(exc, 409)["message"]


async def test_a_client_beyond_the_examined_hops_counts_as_the_proxy(
    hub_server: SessionHubd,
) -> None:
    port = hub_server.port
    proxy = proxy_ip()
    too_deep = ", ".join(["203.0.113.91", *trusted_hops(MAX_HOPS)])
    async with subscribe(port, "pdfm", xff(too_deep), ip=proxy):
        exc = await rejected(port, "pdfm", SUB, ip=proxy)
        assert f"client IP {proxy} " in rejection_error(exc, 409)["message"]
        # One trusted hop fewer and the client is found.
        deep = ", ".join(["203.0.113.91", *trusted_hops(MAX_HOPS - 1)])
        async with subscribe(port, "pdfm", xff(deep), ip=proxy_ip()):
            exc = await rejected(port, "pdfm", xff("203.0.113.91"), ip=proxy_ip())
            rejection_error(exc, 409)


async def test_ipv6_clients_count_per_64_by_default(hub_server: SessionHubd) -> None:
    port = hub_server.port
    async with subscribe(port, "pdfm", xff("2001:db8:77:1::1"), ip=proxy_ip()):
        exc = await rejected(port, "pdfm", xff("2001:db8:77:1:ffff::2"), ip=proxy_ip())
        assert "client IP 2001:db8:77:1::/64 " in rejection_error(exc, 409)["message"]
        # The next /64 is another client.
        async with subscribe(port, "pdfm", xff("2001:db8:77:2::1"), ip=proxy_ip()):
            pass


@pytest.fixture(scope="module")
def per_address_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    """IPv6 clients counted per address (`limits.ipv6_prefix = 128`)."""
    limits = {"trusted_proxies": [TRUSTED_PROXY_NET], "ipv6_prefix": 128}
    with shared_hubd(tmp_path_factory, "ipv6-128", limits=limits) as server:
        yield server


async def test_ipv6_prefix_128_counts_each_address(per_address_server: SessionHubd) -> None:
    server = per_address_server
    async with (
        subscribe(server.port, "pdfm", xff("2001:db8:78:1::1"), ip=proxy_ip()),
        subscribe(server.port, "pdfm", xff("2001:db8:78:1::2"), ip=proxy_ip()),
    ):
        exc = await rejected(server.port, "pdfm", xff("2001:db8:78:1::1"), ip=proxy_ip())
        assert "client IP 2001:db8:78:1::1 " in rejection_error(exc, 409)["message"]


async def test_zone_ids_do_not_make_new_clients(per_address_server: SessionHubd) -> None:
    server = per_address_server
    async with subscribe(server.port, "pdfm", xff("fe80::79%eth0"), ip=proxy_ip()):
        for zone in ("eth1", "lo", "25x"):
            exc = await rejected(server.port, "pdfm", xff(f"fe80::79%{zone}"), ip=proxy_ip())
            assert "client IP fe80::79 " in rejection_error(exc, 409)["message"]


async def test_reload_switches_the_client_ip_header(start_hubd: StartHubd) -> None:
    limits = {"trusted_proxies": [TRUSTED_PROXY_NET]}
    server = await start_hubd(limits=limits)
    proxy = proxy_ip()
    async with subscribe(server.port, "pdfm", real_ip("203.0.113.95"), ip=proxy):
        rejection_error(await rejected(server.port, "pdfm", real_ip("203.0.113.96"), ip=proxy), 409)
        write_config(server.config_path, limits={**limits, "client_ip_header": "x-real-ip"})
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for_line(re.compile(r"\breloaded\b"))
        # The open connection keeps counting as the proxy; new ones are named by X-Real-IP.
        async with subscribe(server.port, "pdfm", real_ip("203.0.113.96"), ip=proxy):
            pass


async def test_serve_logs_a_warning_for_a_trusted_range_of_everyone(start_hubd: StartHubd) -> None:
    server = await start_hubd(limits={"trusted_proxies": ["0.0.0.0/0"]})
    line = await server.wait_for_line(re.compile(r"WARNING .*configuration: limits\.trusted_"))
    assert "'0.0.0.0/0'" in line.string
