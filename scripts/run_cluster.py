"""`make run-cluster`: a throwaway Redis and two hubd nodes on loopback sharing it through the
Redis backplane, in the foreground, until Ctrl-C.

The nodes run config/cluster/node-a.toml and node-b.toml. Redis listens where their
`backplane.url` points, without persistence, its files in a temporary directory removed on
exit. Once both nodes answer /v1/ready, this prints how to reach each (subscribe, publish,
stats, metrics, credentials); the nodes' logs follow, each line prefixed with the node's name.

Stopping: the three processes run in sessions of their own, so the terminal's Ctrl-C reaches
only this script, which stops them in order: both nodes first (SIGTERM: they drain and close
their clients with 1001), then Redis, so that no node logs a lost backplane on its way out.
SIGTERM and SIGHUP do the same; a second signal kills what is left at once. On Linux the
children are also killed if this script dies without cleaning up (SIGKILL).

Run it with the venv's Python (it starts the nodes as `<this python> -m hubd serve`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = (ROOT / "config" / "cluster" / "node-a.toml", ROOT / "config" / "cluster" / "node-b.toml")
REDIS_START_TIMEOUT = 10.0
READY_TIMEOUT = 30.0
REDIS_STOP_TIMEOUT = 5.0
# Beyond server.shutdown_timeout (after which a node exits whatever its clients do).
STOP_MARGIN = 5.0
POLL = 0.1
MIN_REDIS = (6, 2)
INSTALL_REDIS = "apt-get install -y redis-server (Debian/Ubuntu; the package also starts "
INSTALL_REDIS += "its own server on 6379, which this does not use)"

_out = threading.Lock()


def say(message: str) -> None:
    with _out:
        print(f"run-cluster: {message}", flush=True)


@dataclass(frozen=True)
class Node:
    name: str
    config: Path
    host: str
    port: int
    metrics: str  # host:port of the credential-free metrics listener, "" if none
    redis_url: str
    prefix: str  # backplane.prefix: the start of every Redis key and channel
    shutdown_timeout: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    subscriber: str
    publisher: str
    admin: str


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def load_node(path: Path) -> tuple[Node, dict[str, Any]]:
    with path.open("rb") as f:
        config = tomllib.load(f)
    host, port = split_address(config["server"]["listen"][0])
    node = Node(
        name=path.stem,
        config=path,
        host=host,
        port=port,
        metrics=config.get("metrics", {}).get("listen", ""),
        redis_url=config.get("backplane", {}).get("url", ""),
        prefix=config.get("backplane", {}).get("prefix", "hubd"),
        shutdown_timeout=float(config["server"].get("shutdown_timeout", 10.0)),
    )
    return node, config


def credentials(config: dict[str, Any]) -> Credentials:
    """The first clear-text secret of each role in `config` ("" when there is none)."""
    auth = config.get("auth", {})

    def first(entries: list[dict[str, Any]], field: str, role: str) -> str:
        return next((str(e[field]) for e in entries if role in e["roles"] and field in e), "")

    tokens, keys = auth.get("tokens", []), auth.get("api_keys", [])
    return Credentials(
        subscriber=first(tokens, "token", "subscriber"),
        publisher=first(keys, "key", "publisher"),
        admin=first(tokens, "token", "admin"),
    )


def redis_address(nodes: list[Node]) -> tuple[str, int]:
    urls = {node.redis_url for node in nodes}
    if len(urls) != 1:
        raise SystemExit(f"run-cluster: the nodes name different Redis servers: {sorted(urls)}")
    url = urllib.parse.urlsplit(urls.pop())
    if url.scheme != "redis" or url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(
            f"run-cluster: backplane.url must be redis:// on loopback, got {url.geturl()!r}"
        )
    return url.hostname, url.port or 6379


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        # As the servers themselves do: a port held only by closed connections is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def redis_version(exe: str) -> tuple[int, ...]:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def redis_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def node_ready(node: Node) -> bool:
    try:
        with urllib.request.urlopen(f"{node.url}/v1/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGKILL when this script dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Children:
    """The processes started, in start order; stopped in the order described above."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], float]] = []
        self.pumps: list[threading.Thread] = []
        self.stop_requested = False
        self.hurry = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            self.hurry = True
        self.stop_requested = True

    def start(self, name: str, command: list[str], grace: float, log: IO[bytes] | None) -> None:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if log is None else log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.procs.append((name, proc, grace))

    def pump_logs(self) -> None:
        """Copy each piped child's output to ours, line by line, prefixed with its name.
        Started once every child runs: a fork while another thread holds a lock could hang
        the child before its exec (the preexec_fn caveat)."""
        width = max(len(name) for name, _, _ in self.procs)
        for name, proc, _ in self.procs:
            if proc.stdout is not None:
                prefix = f"{name:<{width}} | ".encode()
                thread = threading.Thread(target=_pump, args=(proc.stdout, prefix), daemon=True)
                thread.start()
                self.pumps.append(thread)

    def exited(self) -> tuple[str, int] | None:
        for name, proc, _ in self.procs:
            if (code := proc.poll()) is not None:
                return name, code
        return None

    def stop(self) -> bool:
        """Stop every child (all but the first, Redis, together, then Redis); True if each
        exited with status 0 (or -SIGTERM, Redis's way) on its own."""
        clean = True
        if self.procs:
            clean &= self._stop(self.procs[1:])
            clean &= self._stop(self.procs[:1])
        for thread in self.pumps:
            thread.join(2)
        return clean

    def _stop(self, group: list[tuple[str, subprocess.Popen[bytes], float]]) -> bool:
        for _, proc, _ in group:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max((grace for _, _, grace in group), default=0.0)
        while any(p.poll() is None for _, p, _ in group) and time.monotonic() < deadline:
            if self.hurry:
                break
            time.sleep(POLL)
        clean = True
        for name, proc, _ in group:
            if proc.poll() is None:
                proc.kill()
                say(f"{name} did not stop in time: killed")
                clean = False
            code = proc.wait()
            if code not in (0, -signal.SIGTERM):
                clean = False
            say(f"stopped {name} (status {code})")
        return clean


def _pump(stream: IO[bytes], prefix: bytes) -> None:
    for line in stream:
        with _out:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()


def wait_until(children: Children, done: Callable[[], bool], timeout: float, what: str) -> bool:
    """Poll `done()` until it is true; False (after saying why) when a child exits, a stop
    is requested or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not done():
        if children.stop_requested:
            return False
        if (gone := children.exited()) is not None:
            say(f"{gone[0]} exited with status {gone[1]} while waiting for {what}")
            return False
        if time.monotonic() > deadline:
            say(f"gave up waiting for {what} after {timeout:.0f} s")
            return False
        time.sleep(POLL)
    return True


def banner(nodes: list[Node], redis: tuple[str, int], redis_dir: str, creds: Credentials) -> str:
    a, b = nodes[0], nodes[-1]
    sub_auth = f"-H 'Authorization: Bearer {creds.subscriber}'"
    admin_auth = f"-H 'Authorization: Bearer {creds.admin}'"
    event = '{"event_type":"pdfm","message":"HELLO","body":{"from":"a"}}'
    lines = [
        "",
        f"hubd cluster: {len(nodes)} nodes sharing Redis at redis://{redis[0]}:{redis[1]}/0 "
        f"(throwaway, no persistence: {redis_dir})",
        "",
        "  node    API (HTTP and WebSocket)   metrics (no credential)          config",
    ]
    for node in nodes:
        metrics = f"http://{node.metrics}/metrics" if node.metrics else "(none)"
        config = node.config.relative_to(ROOT)
        lines.append(f"  {node.name:<7} {node.url:<26} {metrics:<32} {config}")
    lines += [
        "",
        "  Credentials (development only: public, in the config files):",
        f"    subscriber  Authorization: Bearer {creds.subscriber}",
        f"    publisher   X-Api-Key: {creds.publisher}",
        f"    admin       Authorization: Bearer {creds.admin}   (stats, clients, /metrics)",
        "",
        f"  Subscribe on {b.name} (in another terminal; 'npm i -g wscat' if you lack it):",
        f"    wscat -c 'ws://{b.host}:{b.port}/v1/ws/subscribe?event_types=pdfm' {sub_auth}",
        f"  Publish on {a.name}; the subscriber on {b.name} receives it:",
        f"    curl -sS -X POST {a.url}/v1/events -H 'X-Api-Key: {creds.publisher}' "
        f"-H 'Content-Type: application/json' -d '{event}'",
        "  Readiness (no credential; 503 while a node cannot reach Redis):",
        *(f"    curl -sS {node.url}/v1/ready" for node in nodes),
        "  Stats and connected clients, per node (admin):",
        f"    curl -sS {a.url}/v1/ws/stats {admin_auth}",
        f"    curl -sS {b.url}/v1/ws/clients {admin_auth}",
    ]
    if a.metrics:
        lines += [
            "  Metrics (the separate listener, no credential; or /metrics on the API with the "
            "admin token):",
            f"    curl -sS http://{a.metrics}/metrics | grep ^hubd_backplane",
        ]
    if shutil.which("redis-cli"):
        lines += [
            "  Redis (one subscription per node):",
            f"    redis-cli -h {redis[0]} -p {redis[1]} PUBSUB NUMSUB {a.prefix}:events",
        ]
    lines += [
        "",
        "  The one-connection-per-IP rule holds across both nodes: from one address, close a",
        "  subscriber before opening another. Stop all three with Ctrl-C.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    if importlib.util.find_spec("hubd") is None:
        say(f"{sys.executable} cannot import hubd: run `make run-cluster`, or .venv/bin/python")
        return 1
    loaded = [load_node(path) for path in CONFIGS]
    nodes = [node for node, _ in loaded]
    creds = credentials(loaded[0][1])
    redis_host, redis_port = redis_address(nodes)

    exe = shutil.which("redis-server")
    if exe is None:
        say(f"needs redis-server on PATH; install it: {INSTALL_REDIS}")
        return 1
    if (version := redis_version(exe)) < MIN_REDIS:
        say(f"{exe} is Redis {'.'.join(map(str, version))}; hubd needs 6.2 or later")
        return 1
    addresses = [(redis_host, redis_port, "Redis (backplane.url)")]
    for node in nodes:
        addresses.append((node.host, node.port, f"{node.name} server.listen"))
        if node.metrics:
            addresses.append((*split_address(node.metrics), f"{node.name} metrics.listen"))
    for host, port, what in addresses:
        if port_in_use(host, port):
            say(
                f"{host}:{port} ({what}) is already in use; stop what listens there "
                f"(ss -ltnp 'sport = :{port}'), perhaps an earlier run-cluster"
            )
            return 1

    children = Children()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, children.on_signal)
    redis_dir = tempfile.mkdtemp(prefix="hubd-cluster-")
    try:
        ok = serve(children, exe, nodes, (redis_host, redis_port), redis_dir, creds)
    finally:
        say("stopping")
        ok = children.stop() and ok
        shutil.rmtree(redis_dir, ignore_errors=True)
    return 0 if ok else 1


def serve(
    children: Children,
    exe: str,
    nodes: list[Node],
    redis: tuple[str, int],
    redis_dir: str,
    creds: Credentials,
) -> bool:
    """Start Redis and the nodes, print the banner, wait for a stop: True when a stop was
    asked for once everything was ready, False when something failed first."""
    say(f"starting Redis on {redis[0]}:{redis[1]} and {', '.join(n.name for n in nodes)}")
    log = Path(redis_dir) / "redis.log"
    with log.open("wb") as redis_log:
        command = [exe, "--bind", redis[0], "--port", str(redis[1]), "--dir", redis_dir]
        command += ["--save", "", "--appendonly", "no"]
        children.start("redis", command, REDIS_STOP_TIMEOUT, redis_log)
    if not wait_until(children, lambda: redis_answers(*redis), REDIS_START_TIMEOUT, "Redis"):
        print(log.read_text(errors="replace")[-2000:], flush=True)
        return False
    for node in nodes:
        command = [sys.executable, "-m", "hubd", "serve", "--config", str(node.config)]
        children.start(node.name, command, node.shutdown_timeout + STOP_MARGIN, None)
    children.pump_logs()
    if not wait_until(children, lambda: all(map(node_ready, nodes)), READY_TIMEOUT, "the nodes"):
        return False
    with _out:
        print(banner(nodes, redis, redis_dir, creds), flush=True)
    while not children.stop_requested:
        if (gone := children.exited()) is not None:
            say(f"{gone[0]} exited with status {gone[1]}; stopping the others")
            return False
        time.sleep(POLL)
    return True


if __name__ == "__main__":
    sys.exit(main())
