"""The sockets `hubd.service` binds: `server.reuse_port` sets SO_REUSEPORT on the main
listeners (so that several processes share them) and not on the metrics listener, which
instance N of `hubd serve --instance N` binds at `metrics.listen`'s port plus N-1."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from hubd.service import ListenError, check_instance, open_all, open_listeners
from hubd.settings import ConfigError
from hubd.web.server_config import BACKLOG

from .conftest import make_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def closing() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def shared(port: int, metrics: str = "127.0.0.1:0", reuse_port: bool = True) -> str:
    return f"""
    [server]
    listen = ["127.0.0.1:{port}"]
    reuse_port = {"true" if reuse_port else "false"}
    [backplane]
    kind = "redis"
    [metrics]
    listen = "{metrics}"
    """


def test_reuse_port_lets_two_processes_bind_one_port(closing: ExitStack) -> None:
    port = free_port()
    settings = make_settings(shared(port))
    first = [closing.enter_context(s) for s in open_listeners(settings)]
    second = [closing.enter_context(s) for s in open_listeners(settings)]
    for sock in first + second:
        assert sock.getsockname() == ("127.0.0.1", port)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1


def test_without_reuse_port_the_second_bind_fails_naming_the_address(closing: ExitStack) -> None:
    port = free_port()
    settings = make_settings(f'[server]\nlisten = ["127.0.0.1:{port}"]\n')
    (sock,) = open_listeners(settings)
    closing.enter_context(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    with pytest.raises(ListenError) as info:
        open_listeners(settings)
    assert str(info.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_port_held_without_reuse_port_says_what_sharing_needs(closing: ExitStack) -> None:
    port = free_port()
    (plain,) = open_listeners(make_settings(f'[server]\nlisten = ["127.0.0.1:{port}"]\n'))
    closing.enter_context(plain)
    with pytest.raises(ListenError) as info:
        open_listeners(make_settings(shared(port)))
    assert str(info.value) == (
        f"cannot listen on 127.0.0.1:{port}: Address already in use (server.reuse_port = true "
        "shares it only with processes that set it too and run as the same user)"
    )


def test_instance_n_binds_metrics_at_its_port_plus_n_minus_1(closing: ExitStack) -> None:
    port = free_port()
    with socket.socket() as probe:  # a metrics port M whose M+1 is free too
        probe.bind(("127.0.0.1", 0))
        metrics = probe.getsockname()[1]
    settings = make_settings(shared(port, f"127.0.0.1:{metrics - 1}"))
    listeners = open_all(settings, instance=2)
    closing.callback(listeners.close)
    assert listeners.metrics is not None
    assert listeners.metrics.getsockname() == ("127.0.0.1", metrics)
    # Each process's own: a second instance 2 cannot bind it.
    assert listeners.metrics.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    with pytest.raises(ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{metrics}: "):
        open_all(settings, instance=2)


def test_check_instance_refuses_a_metrics_port_past_65535() -> None:
    settings = make_settings(shared(8080, "127.0.0.1:65535"))
    check_instance(settings, 1)
    with pytest.raises(ConfigError, match=r"^metrics\.listen '127\.0\.0\.1:65535' with --instance"):
        check_instance(settings, 2)
    check_instance(make_settings(), 2)  # no metrics listener: nothing to move


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2) to read a backlog")
def test_the_listen_backlog_holds_a_reconnect_storm(closing: ExitStack) -> None:
    """A storm of 20,000 reconnecting clients overflowed a backlog of 1024 (ECONNRESET
    while the core was busy with handshakes); listeners are made with 4096, as far as the
    kernel's somaxconn allows. `ss` shows a listening socket's backlog as its Send-Q."""
    settings = make_settings('[server]\nlisten = ["127.0.0.1:0"]\n')
    (sock,) = open_listeners(settings)
    closing.callback(sock.close)
    port = sock.getsockname()[1]
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    backlog = int(out[2])  # State Recv-Q Send-Q Local Peer
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert backlog == min(BACKLOG, somaxconn)
    assert BACKLOG >= 4096
