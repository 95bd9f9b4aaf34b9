"""hubd.sdnotify on real sockets: the sd_notify datagrams (`Notifier`), the watchdog interval
and socket activation (`listen_fds`).

Cases that need descriptors 3, 4, ... run in a fresh Python process, which can overwrite
those numbers without disturbing the test run."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubd.sdnotify import Notifier, listen_fds, watchdog_interval

# A bound on a call that must return at once; only reached when it blocks.
GUARD = 30.0


# -- Notifier --------------------------------------------------------------------------------


def drain(receiver: socket.socket) -> list[bytes]:
    """Every datagram already queued on the non-blocking `receiver`."""
    datagrams: list[bytes] = []
    while True:
        try:
            datagrams.append(receiver.recv(65536))
        except BlockingIOError:
            return datagrams


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def receiver_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a file, as systemd's $NOTIFY_SOCKET is."""
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.setblocking(False)
    with receiver:
        yield receiver, str(path)


@pytest.fixture
def receiver_abstract() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace: NOTIFY_SOCKET=@name."""
    name = f"hubd-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(b"\0" + name.encode())
    receiver.setblocking(False)
    with receiver:
        yield receiver, f"@{name}"


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notify_sends_exactly_the_given_states_one_datagram_per_call(
    kind: str, request: pytest.FixtureRequest
) -> None:
    receiver, address = request.getfixturevalue(f"receiver_{kind}")
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=serving on http://127.0.0.1:8080") is True
    assert notifier.notify("WATCHDOG=1") is True
    assert notifier.notify("STOPPING=1") is True
    assert drain(receiver) == [
        b"READY=1\nSTATUS=serving on http://127.0.0.1:8080",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    notifier.close()
    assert not notifier.enabled
    assert notifier.notify("WATCHDOG=1") is False
    assert drain(receiver) == []


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_without_notify_socket_notifier_is_disabled(
    environ: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_environ(environ)
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert warnings_from(caplog) == []


def test_notify_socket_that_is_not_a_unix_address_disables_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier("run/notify")
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert len(warnings_from(caplog)) == 1


def test_from_environ_reads_the_process_environment(
    receiver_path: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, address = receiver_path
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert Notifier.from_environ().notify("READY=1") is True
    assert drain(receiver) == [b"READY=1"]


@pytest.mark.parametrize("case", ["no-such-file", "receiver-closed", "abstract-unbound"])
def test_unreachable_socket_returns_false_and_warns_once(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if case == "no-such-file":
        address = str(tmp_path / "missing.sock")
    elif case == "receiver-closed":
        address = str(tmp_path / "gone.sock")
        gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        gone.bind(address)
        gone.close()  # the file stays, nobody reads it: ECONNREFUSED
    else:
        address = f"@hubd-test-unbound-{uuid.uuid4().hex}"
    notifier = Notifier(address)
    assert notifier.enabled
    with caplog.at_level(logging.WARNING, logger="hubd"):
        results = [notifier.notify("READY=1"), notifier.notify("WATCHDOG=1")]
        results += [notifier.notify("STOPPING=1", "STATUS=draining")]
    assert results == [False, False, False]
    warned = warnings_from(caplog)
    assert len(warned) == 1, warned
    assert "NOTIFY_SOCKET" in warned[0]
    notifier.close()


def test_notify_never_blocks_on_a_receiver_that_stopped_reading(
    receiver_path: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A full receive queue fails the send (False, one warning) instead of blocking."""
    receiver, address = receiver_path
    notifier = Notifier(address)
    results: list[bool] = []

    def flood() -> None:
        for _ in range(1000):  # far beyond a unix datagram queue (net.unix.max_dgram_qlen)
            results.append(notifier.notify("WATCHDOG=1"))

    with caplog.at_level(logging.WARNING, logger="hubd"):
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        thread.join(GUARD)
        blocked = thread.is_alive()
    notifier.close()
    assert not blocked, "Notifier.notify blocked on a full receive queue"
    assert len(results) == 1000
    assert True in results and False in results
    assert len(warnings_from(caplog)) == 1
    assert set(drain(receiver)) == {b"WATCHDOG=1"}


# -- watchdog_interval ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "1.5"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
    ],
    ids=[
        "30s",
        "200ms",
        "1us",
        "own-pid",
        "unset",
        "empty",
        "zero",
        "negative",
        "garbage",
        "not-integer",
        "other-pid",
        "pid-only",
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    assert watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_interval() is None


# -- listen_fds in process (descriptors 3+ are never touched) --------------------------------

OTHER_PID = str(os.getpid() + 1)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_PID": str(os.getpid())},
        {"LISTEN_FDS": "", "LISTEN_PID": str(os.getpid())},
        {"LISTEN_FDS": "0", "LISTEN_PID": str(os.getpid())},
        {"LISTEN_FDS": "1", "LISTEN_PID": OTHER_PID, "LISTEN_FDNAMES": "hubd.socket"},
        {"LISTEN_FDS": "1"},
        {"LISTEN_FDS": "two", "LISTEN_PID": str(os.getpid())},
    ],
    ids=["unset", "pid-only", "empty", "zero", "other-pid", "no-pid", "garbage"],
)
def test_listen_fds_returns_nothing_and_clears_the_variables(environ: dict[str, str]) -> None:
    env = {**environ, "PATH": "/usr/bin"}
    assert listen_fds(env) == []
    assert env == {"PATH": "/usr/bin"}  # nothing left for a child process to inherit


def test_listen_fds_for_another_process_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": OTHER_PID}
    with caplog.at_level(logging.WARNING, logger="hubd"):
        assert listen_fds(env) == []
    warned = warnings_from(caplog)
    assert len(warned) == 1 and OTHER_PID in warned[0], warned


def test_listen_fds_clears_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", OTHER_PID)
    monkeypatch.setenv("LISTEN_FDNAMES", "hubd.socket")
    assert listen_fds() == []
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        assert name not in os.environ


# -- listen_fds on descriptors 3, 4, ... (in a fresh process) ---------------------------------

# Puts one descriptor per argument at 3, 4, ... (a listening TCP socket, a bound but not
# listening one, a UDP socket, /dev/null, or nothing), sets LISTEN_FDS/LISTEN_PID for this
# very process in os.environ, calls listen_fds() and prints what it returned as JSON.
ACTIVATION_CHILD = r"""
import fcntl, json, os, socket, sys
from hubd import sdnotify

def make(kind):
    # A new descriptor of `kind` and its port (None for a file).
    if kind == "file":
        return os.open(os.devnull, os.O_RDONLY), None
    udp = kind == "udp"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if kind == "tcp":
        sock.listen(8)
    port = sock.getsockname()[1]
    return sock.detach(), port

kinds = sys.argv[1:]
high, ports = [], []
for i, kind in enumerate(kinds):
    if kind == "closed":
        high.append(None)
        ports.append(None)
        continue
    fd, port = make(kind)
    # Out of the way first, so that making the next one cannot land on a target number.
    high.append(fcntl.fcntl(fd, fcntl.F_DUPFD, 100 + i))
    os.close(fd)
    ports.append(port)
for i, moved in enumerate(high):
    target = sdnotify.SD_LISTEN_FDS_START + i
    if moved is None:
        try:
            os.close(target)
        except OSError:
            pass
    else:
        os.dup2(moved, target)  # inheritable, as systemd passes it
        os.close(moved)

os.environ.update(
    LISTEN_FDS=str(len(kinds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="hubd.socket"
)
try:
    sockets = sdnotify.listen_fds()
except sdnotify.ActivationError as exc:
    result = {"error": str(exc)}
else:
    result = {
        "sockets": [
            {
                "fd": s.fileno(),
                "port": s.getsockname()[1],
                "type": int(s.type),
                "inheritable": s.get_inheritable(),
                "blocking": s.getblocking(),
            }
            for s in sockets
        ]
    }
result["ports"] = ports
result["left"] = sorted(k for k in os.environ if k.startswith("LISTEN_"))
print(json.dumps(result))
"""


def activate(*kinds: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    result = subprocess.run(
        [sys.executable, "-c", ACTIVATION_CHILD, *kinds],
        capture_output=True,
        text=True,
        timeout=GUARD,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_listen_fds_takes_the_listening_sockets_from_fd_3_in_order() -> None:
    report = activate("tcp", "tcp")
    assert report["left"] == []
    ports = report["ports"]
    assert report["sockets"] == [
        {
            "fd": 3,
            "port": ports[0],
            "type": int(socket.SOCK_STREAM),
            "inheritable": False,  # a process hubd starts does not get them
            "blocking": False,
        },
        {
            "fd": 4,
            "port": ports[1],
            "type": int(socket.SOCK_STREAM),
            "inheritable": False,
            "blocking": False,
        },
    ]


@pytest.mark.parametrize(
    ("kinds", "fd", "reason"),
    [
        (["unlistened"], 3, "not a listening TCP socket"),
        (["udp"], 3, "not a listening TCP socket"),
        (["file"], 3, "not a socket"),
        (["closed"], 3, "not a socket"),
        (["tcp", "unlistened"], 4, "not a listening TCP socket"),
        (["tcp", "closed"], 4, "not a socket"),
    ],
    ids=[
        "bound-not-listening",
        "udp",
        "regular-file",
        "closed",
        "second-not-listening",
        "second-missing",
    ],
)
def test_listen_fds_refuses_a_descriptor_it_cannot_serve(
    kinds: list[str], fd: int, reason: str
) -> None:
    report = activate(*kinds)
    assert "sockets" not in report, report
    assert f"fd {fd} " in report["error"], report
    assert reason in report["error"], report
