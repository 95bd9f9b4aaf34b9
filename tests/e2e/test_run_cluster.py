"""`make run-cluster` (scripts/run_cluster.py) as an operator meets it: Redis and the two nodes
of config/cluster/ come up, both answer /v1/health, an event published on node A reaches a
subscriber on node B, the credential-free metrics listeners answer, and SIGINT (Ctrl-C)
stops all three processes, leaving none behind.

It uses the fixed addresses of config/cluster/ (6380, 8081, 8082, 9181, 9182): it is skipped
when one is taken, as on a host where someone runs `make run-cluster`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from .helpers import WAIT, http_client, subscribe

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run_cluster.py"
CONFIGS = [ROOT / "config" / "cluster" / "node-a.toml", ROOT / "config" / "cluster" / "node-b.toml"]
BANNER_END = "Stop all three with Ctrl-C."
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
SUBSCRIBER = {"Authorization": "Bearer dev-subscriber-token"}
PUBLISHER = {"X-Api-Key": "dev-publisher-key"}


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def cluster_addresses() -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    for path in CONFIGS:
        config = tomllib.loads(path.read_text())
        found[path.stem] = address(config["server"]["listen"][0])
        found[f"{path.stem} metrics"] = address(config["metrics"]["listen"])
        redis = urllib.parse.urlsplit(config["backplane"]["url"])
        assert redis.hostname and redis.port
        found["redis"] = (redis.hostname, redis.port)
    return found


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def children_of(pid: int) -> dict[int, str]:
    """The processes whose parent is `pid`, with their command lines (Linux /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # The field after the parenthesised command name, which may hold spaces: state, ppid.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cluster:
    """scripts/run_cluster.py in a session of its own, its output collected."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.banner = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if BANNER_END in line:
                self.banner.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_banner(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not self.banner.wait(0.1):
            assert self.proc.poll() is None, f"run_cluster.py exited:\n{self.output}"
            assert time.monotonic() < deadline, f"no banner after {START_TIMEOUT} s:\n{self.output}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server; .ci/run does)")
    if not Path("/proc/self/stat").exists():
        pytest.skip("finds the script's child processes through /proc (Linux)")
    for what, (host, port) in cluster_addresses().items():
        if listening(host, port):
            pytest.skip(f"{host}:{port} ({what}) is in use: is `make run-cluster` running?")
    started = Cluster()
    try:
        yield started
    finally:
        # After a failure: leave nothing running for the next tests.
        children = children_of(started.proc.pid)
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def cross_node_delivery(a: tuple[str, int], b: tuple[str, int]) -> None:
    event = {"event_type": "pdfm", "message": "HELLO", "body": {"from": "a"}}
    async with subscribe(b[1], "pdfm", SUBSCRIBER, host=b[0]) as sub:
        async with http_client(f"http://{a[0]}:{a[1]}") as http:
            response = await http.post("/v1/events", json=event, headers=PUBLISHER)
        assert response.status_code == 202, response.text
        event_id = response.json()["id"]
        with trio.fail_after(WAIT):
            while (frame := await sub.recv())["event_type"] != "pdfm":
                pass
        assert frame["id"] == event_id
        assert frame["body"] == {"from": "a"}


def test_run_cluster_serves_two_nodes_and_ctrl_c_stops_all_three(cluster: Cluster) -> None:
    cluster.wait_banner()
    addresses = cluster_addresses()
    children = children_of(cluster.proc.pid)
    commands = sorted(children.values())
    assert len(children) == 3, commands
    assert sum("redis-server" in c for c in commands) == 1, commands
    assert sum("hubd serve" in c for c in commands) == 2, commands

    for name in ("node-a", "node-b"):
        host, port = addresses[name]
        health = httpx.get(f"http://{host}:{port}/v1/health", timeout=WAIT)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        ready = httpx.get(f"http://{host}:{port}/v1/ready", timeout=WAIT)
        assert ready.json() == {"status": "ready", "backplane": "redis: connected"}
        host, port = addresses[f"{name} metrics"]
        metrics = httpx.get(f"http://{host}:{port}/metrics", timeout=WAIT)
        assert metrics.status_code == 200
        assert "\nhubd_backplane_up 1.0\n" in metrics.text
        # What the banner tells the operator to paste.
        assert f"http://{host}:{port}/metrics" in cluster.output

    trio.run(cross_node_delivery, addresses["node-a"], addresses["node-b"])

    cluster.proc.send_signal(signal.SIGINT)
    assert cluster.proc.wait(STOP_TIMEOUT) == 0, cluster.output
    cluster.reader.join(WAIT)
    assert [pid for pid in children if alive(pid)] == [], cluster.output
    assert [a for a in addresses.values() if listening(*a)] == [], cluster.output
    for name in ("node-a", "node-b", "redis"):
        assert f"run-cluster: stopped {name} (status 0)" in cluster.output
    # Both nodes drained on their own before Redis went: none lost its backplane.
    assert "backplane lost" not in cluster.output, cluster.output
