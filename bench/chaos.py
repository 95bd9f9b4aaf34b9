"""`python -m bench.chaos` (`make chaos`): a 3-node Redis-backed hubd cluster under faults,
checked event by event for silent loss.

The run starts a throwaway redis-server (append-only file, fsync on every write, so killing
it loses nothing accepted) and `--nodes` hubd nodes, each on its own loopback port. Three
publishers post one event at a time, each at `--rate` events/s, round robin over the
channels and the nodes whose process exists (a stopped node makes the request time out),
and record every attempt with its outcome. `--subscribers` subscribers, built on
`hubd.client` (reconnect and resume included), each reach their node through a relay
owned by this harness, from their own 127.0.x.y source address. The relays let the harness
cut connections, stall a subscriber, and (`--lossy-relay P`) swallow event frames to prove
that the checker notices loss.

Faults, on a schedule drawn from `--seed`, one at a time, each followed by a recovery
check: `kill` (SIGKILL a node, restart it a few seconds later), `stop` (SIGSTOP/SIGCONT a
node; once for longer than the idle timeout), `redis` (SIGKILL redis-server, restart it on
the same port and directory), `slow` (a relay stops reading from its node long enough for
the node's queue for that subscriber to overflow), `storm` (every relay cuts every
connection at once).

At the end everything is brought back, publishing stops, the subscribers drain, and
`bench.checker.check()` reads every record: the run exits 1 when it finds silent loss
(or anything else the checker calls a failure), 0 otherwise. Every process started here is
stopped on the way out, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx
import trio

from bench.checker import (
    Ended,
    Flagged,
    Published,
    Received,
    Record,
    Subscribed,
    check,
    dump_jsonl,
)
from bench.loadgen import source_address
from hubd.client import (
    ClientError,
    Connected,
    Credentials,
    Event,
    Gap,
    HubClient,
    Notice,
    Reconnecting,
    Resumed,
)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CHANNELS = ("pdfm", "orchestrator", "global")
FAULT_KINDS = ("kill", "stop", "redis", "slow", "storm")
SUB_TOKEN = "chaos-subscriber-token"
# Publishing to `global` needs the admin role.
PUB_KEY = "chaos-publisher-key"

# -- the cluster's settings ------------------------------------------------------------------
LEASE_SECONDS = 3.0
IDLE_TIMEOUT = 5.0
HISTORY_SIZE = 20000
SHUTDOWN_TIMEOUT = 3.0

# -- the subscribers' client settings ---------------------------------------------------------
HEARTBEAT = 1.5  # well inside the idle timeout
# Longer than a `slow` pause: a stalled relay must not look like a dead connection to the
# client, or it would reconnect (and resume) before the node's queue overflows.
DEAD_AFTER = 9.0
BACKOFF = (0.2, 2.0)
CONNECT_TIMEOUT = 3.0

# -- the publishers ----------------------------------------------------------------------------
PUBLISH_TIMEOUT = 2.0

# -- faults --------------------------------------------------------------------------------------
WARMUP = 3.0  # seconds of undisturbed traffic before the first fault
LAST_FAULT_BEFORE_END = 5.0  # no fault starts later than this before the end of the period
GAP = (3.0, 6.0)  # seconds between the end of one fault's recovery and the next fault
KILL_DOWN = (2.0, 5.0)
STOP_SHORT = (1.0, 4.0)
STOP_LONG = 8.0  # longer than IDLE_TIMEOUT
REDIS_DOWN = (1.0, 3.0)
RECOVERY_TIMEOUT = 30.0
# How long the run may take beyond its fault period (start, recovery, drain, checks).
OVERRUN = 600.0
# The relay's receive buffer towards its node: small, so that a stalled subscriber fills
# the node's socket quickly and the node's own queue has to take the rest.
RELAY_RCVBUF = 16384

Outcome = Literal["accepted", "refused", "unknown"]


def now_wall() -> str:
    return time.strftime("%H:%M:%S")


# -- processes ---------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Have the kernel SIGKILL the child if this harness dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Processes:
    """Every child process of the run, so that all of them are stopped on the way out."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                # Out of the terminal's process group: Ctrl-C reaches the harness only,
                # which then stops the children itself.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.children.append(proc)
        return proc

    def reap_all(self) -> None:
        """Stop every child still running: SIGCONT and SIGTERM, then SIGKILL."""
        alive = [p for p in self.children if p.poll() is None]
        for proc in alive:
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT + 3.0
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        for proc in alive:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                proc.wait()
        self.children = []


async def wait_exit(proc: subprocess.Popen[bytes], within: float) -> bool:
    """Whether `proc` ended within `within` seconds (reaped if so)."""
    with trio.move_on_after(within):
        while proc.poll() is None:  # noqa: ASYNC110 - polling a child process
            await trio.sleep(0.02)
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Redis:
    """redis-server on a fixed loopback port: with an fsync'ed append-only file in `dir`
    (`persistent`: a kill loses nothing it acknowledged), or with no persistence at all (a
    kill loses everything: nodes see a new epoch and must tell every subscriber)."""

    def __init__(self, procs: Processes, run_dir: Path, persistent: bool = True) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit(
                "bench.chaos needs redis-server; install it (apt-get install -y redis-server)"
            )
        self.exe = exe
        self.procs = procs
        self.dir = run_dir / "redis"
        self.dir.mkdir(exist_ok=True)
        self.log = run_dir / "redis.log"
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.up
        self.proc = self.procs.spawn(
            [
                self.exe,
                "--port", str(self.port),
                "--bind", HOST,
                "--dir", str(self.dir),
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always",
                "--save", "",
            ],
            self.log,
        )  # fmt: skip

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await wait_exit(self.proc, 10.0)
        self.proc = None

    async def wait_ready(self, within: float) -> bool:
        """Whether it answers PING with PONG (not LOADING) within `within` seconds."""
        with trio.move_on_after(within):
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                with contextlib.suppress(OSError, trio.BrokenResourceError, trio.TooSlowError):
                    stream = await trio.open_tcp_stream(HOST, self.port)
                    async with stream:
                        with trio.fail_after(1.0):
                            await stream.send_all(b"PING\r\n")
                            if (await stream.receive_some(64)).startswith(b"+PONG"):
                                return True
                await trio.sleep(0.05)
        return False


NodeState = Literal["up", "stopped", "down"]


class Node:
    """One `hubd serve` on a fixed port; its log (all its lives) in the run directory."""

    def __init__(self, name: str, procs: Processes, run_dir: Path, config: str) -> None:
        self.name = name
        self.procs = procs
        self.port = free_port()
        self.config = run_dir / f"{name}.toml"
        self.config.write_text(config.replace("@PORT@", str(self.port)), encoding="utf-8")
        self.log = run_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.state: NodeState = "down"
        self.lives = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, at: float) -> None:
        assert self.proc is None
        self.lives += 1
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"=== chaos: start #{self.lives} at t={at:.3f} ===\n")
        self.proc = self.procs.spawn(
            [sys.executable, "-m", "hubd", "serve", "--config", str(self.config)], self.log
        )
        self.state = "up"

    async def kill(self, at: float) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await wait_exit(self.proc, 10.0)
        self.proc = None
        self.state = "down"
        with open(self.log, "a", encoding="utf-8") as log:  # noqa: ASYNC230 - one line
            log.write(f"=== chaos: SIGKILL at t={at:.3f} ===\n")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.state = "stopped"

    def cont(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.state = "up"

    async def terminate(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        if not await wait_exit(self.proc, SHUTDOWN_TIMEOUT + 3.0):
            self.proc.kill()
            await wait_exit(self.proc, 10.0)
        self.proc = None
        self.state = "down"


def node_config(redis_url: str, queue_size: int) -> str:
    """The TOML every node runs on (`@PORT@` is its own port)."""
    return f"""\
[server]
listen = ["{HOST}:@PORT@"]
shutdown_timeout = {SHUTDOWN_TIMEOUT}

[hub]
idle_timeout = {IDLE_TIMEOUT}
history_size = {HISTORY_SIZE}
queue_size = {queue_size}

[log]
level = "info"

[backplane]
kind = "redis"
url = "{redis_url}"
prefix = "chaos"
lease_seconds = {LEASE_SECONDS}

[[auth.tokens]]
name = "chaos-subscriber"
token = "{SUB_TOKEN}"
roles = ["subscriber"]

[[auth.api_keys]]
name = "chaos-publisher"
key = "{PUB_KEY}"
roles = ["admin"]
"""


async def wait_node_ready(http: httpx.AsyncClient, node: Node, within: float) -> bool:
    """Whether `GET /v1/ready` answers 200 (serving, backplane connected) within `within` s."""
    with trio.move_on_after(within):
        while True:
            if node.proc is None or node.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"{node.url}/v1/ready")
                if response.status_code == 200:
                    return True
            await trio.sleep(0.1)
    return False


# -- the run's clock and records ------------------------------------------------------------------


class Run:
    """What every task shares: the clock, the records, the cluster, the logs."""

    def __init__(self, opts: Options, run_dir: Path, procs: Processes) -> None:
        self.opts = opts
        self.run_dir = run_dir
        self.procs = procs
        self.t0 = trio.current_time()
        self.records: list[Record] = []
        self.accepted: list[Published] = []
        self.outcomes: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.redis = Redis(procs, run_dir, opts.redis_persistence == "aof")
        config = node_config(self.redis.url, opts.queue_size)
        self.nodes = [Node(f"n{i + 1}", procs, run_dir, config) for i in range(opts.nodes)]
        self.relays: list[Relay] = []
        self.subs: list[Sub] = []
        self.faults: list[FaultEntry] = []
        self.swallowed: list[tuple[str, str, int, float]] = []
        self.http = httpx.AsyncClient(timeout=2.0)
        self._log: TextIO = open(run_dir / "harness.log", "a", encoding="utf-8")  # noqa: SIM115

    def now(self) -> float:
        return round(trio.current_time() - self.t0, 6)

    def log(self, text: str) -> None:
        self._log.write(f"t={self.now():9.3f} {text}\n")
        self._log.flush()

    def say(self, text: str) -> None:
        """To stdout and the harness log."""
        print(f"[{now_wall()} t={self.now():7.1f}] {text}", flush=True)
        self.log(text)

    def record(self, rec: Record) -> None:
        self.records.append(rec)

    async def aclose(self) -> None:
        await self.http.aclose()
        self._log.close()


# -- the relay ------------------------------------------------------------------------------------


class FrameFilter:
    """The server-to-client bytes of one relayed connection, in `--lossy-relay` mode.

    The HTTP answer passes as it is; after a 101, the WebSocket frames are parsed (the
    server's are unmasked, but a mask is skipped if present; 7-, 16- and 64-bit lengths;
    fragmented messages are held until their last frame while control frames pass at
    once) and a whole text message that carries a published event is swallowed with
    probability `p`. Everything else passes unchanged, in order."""

    def __init__(self, p: float, rng: random.Random, on_swallow: Callable[[bytes], None]) -> None:
        self.p = p
        self.rng = rng
        self.on_swallow = on_swallow
        self.buf = bytearray()
        self.state: Literal["head", "frames", "raw"] = "head"
        self.held: list[bytes] = []  # the frames of a fragmented data message
        self.held_payload: list[bytes] = []
        self.held_opcode = 0

    def feed(self, data: bytes) -> bytes:
        if self.state == "raw":
            return data
        self.buf += data
        out = bytearray()
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return b""
            head = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            out += head
            if not head.startswith(b"HTTP/1.1 101"):
                self.state = "raw"  # a refusal: its body is not WebSocket frames
                out += self.buf
                self.buf.clear()
                return bytes(out)
            self.state = "frames"
        while (frame := self._next_frame()) is not None:
            fin, opcode, raw, payload = frame
            if opcode >= 0x8:
                out += raw  # control frames may sit between fragments
                continue
            if opcode != 0x0:
                self.held_opcode = opcode
                self.held, self.held_payload = [], []
            self.held.append(raw)
            self.held_payload.append(payload)
            if not fin:
                continue
            message = b"".join(self.held_payload)
            if self.held_opcode == 0x1 and b'"seq":' in message and self.rng.random() < self.p:
                self.on_swallow(message)
            else:
                out += b"".join(self.held)
            self.held, self.held_payload = [], []
        return bytes(out)

    def _next_frame(self) -> tuple[bool, int, bytes, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        fin = bool(buf[0] & 0x80)
        opcode = buf[0] & 0x0F
        masked = bool(buf[1] & 0x80)
        length = buf[1] & 0x7F
        pos = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = int.from_bytes(buf[2:4], "big")
            pos = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = int.from_bytes(buf[2:10], "big")
            pos = 10
        mask = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            mask = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + length:
            return None
        payload = bytes(buf[pos : pos + length])
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        raw = bytes(buf[: pos + length])
        del buf[: pos + length]
        return fin, opcode, raw, payload


class Relay:
    """A TCP proxy owned by the harness for one subscriber: its client connects to
    127.0.0.1:`port`, and each connection is carried to a node from the subscriber's own
    source address. It prefers its home node and moves on to the next one when a node
    refuses the connection or, last time, never answered (like a load balancer with
    passive health checks).

    `pause()` stops forwarding server-to-client and stops reading from the node, so the
    node's socket fills and its queue for the subscriber overflows (client-to-server
    bytes, the pings, still flow); `cut()` drops every connection at once."""

    def __init__(
        self, run: Run, sub: str, index: int, home: int, lossy: float, rng: random.Random
    ) -> None:
        self.run = run
        self.sub = sub
        self.source = source_address(index)
        self.home = home
        self.lossy = lossy
        self.rng = rng
        self.port = 0
        self._flowing = trio.Event()
        self._flowing.set()
        self._scopes: set[trio.CancelScope] = set()
        self._suspect: dict[str, float] = {}
        self.connections = 0
        self.node: Node | None = None  # the node of the current connection

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def pause(self) -> None:
        if not self.paused:
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> int:
        scopes = list(self._scopes)
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def _order(self) -> list[Node]:
        nodes = self.run.nodes
        order = nodes[self.home :] + nodes[: self.home]
        now = trio.current_time()
        fine = [n for n in order if self._suspect.get(n.name, 0.0) <= now]
        return fine + [n for n in order if n not in fine]

    async def _connect(self) -> tuple[trio.SocketStream, Node] | None:
        for node in self._order():
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RELAY_RCVBUF)
                await sock.bind((self.source, 0))
                with trio.fail_after(2.0):
                    await sock.connect((HOST, node.port))
            except (OSError, trio.TooSlowError) as exc:
                sock.close()
                self.run.log(f"{self.sub} relay: {node.name} refused: {exc!r}")
                continue
            return trio.SocketStream(sock), node
        return None

    async def _handle(self, client: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        self._scopes.add(scope)
        upstream: trio.SocketStream | None = None
        got = [0]  # bytes from the node, counted by _down even when it is cancelled
        node: Node | None = None
        started = trio.current_time()
        try:
            with scope:
                connected = await self._connect()
                if connected is None:
                    self.run.log(f"{self.sub} relay: no node accepted the connection")
                    return
                upstream, node = connected
                self.connections += 1
                self.node = node
                self.run.log(f"{self.sub} relay: connected to {node.name} from {self.source}")
                flt: FrameFilter | None = None
                if self.lossy > 0:
                    flt = FrameFilter(self.lossy, self.rng, self._swallowed)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._up, client, upstream, nursery.cancel_scope)
                    await self._down(upstream, client, flt, got)
                    nursery.cancel_scope.cancel()
        finally:
            self._scopes.discard(scope)
            with trio.CancelScope(shield=True):
                await client.aclose()
                if upstream is not None:
                    await upstream.aclose()
            if node is not None:
                if got[0] == 0 and not scope.cancel_called:
                    # Nothing ever came back: a stopped (or wedged) node. Try the others
                    # first for a while.
                    self._suspect[node.name] = trio.current_time() + 5.0
                self.run.log(
                    f"{self.sub} relay: connection to {node.name} ended after "
                    f"{trio.current_time() - started:.1f} s, {got[0]} bytes from the node"
                    + (" (cut)" if scope.cancel_called else "")
                )

    async def _up(
        self, client: trio.SocketStream, upstream: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while data := await client.receive_some(65536):
                await upstream.send_all(data)
        done.cancel()

    async def _down(
        self,
        upstream: trio.SocketStream,
        client: trio.SocketStream,
        flt: FrameFilter | None,
        got: list[int],
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while True:
                await self._flowing.wait()
                data = await upstream.receive_some(65536)
                if not data:
                    break
                got[0] += len(data)
                if flt is not None:
                    data = flt.feed(data)
                if data:
                    await client.send_all(data)

    def _swallowed(self, message: bytes) -> None:
        try:
            body = json.loads(message)["body"]
            pub, seq = str(body["pub"]), int(body["seq"])
        except (ValueError, KeyError, TypeError):
            pub, seq = "?", -1
        self.run.swallowed.append((self.sub, pub, seq, self.run.now()))
        self.run.log(f"{self.sub} relay: swallowed the frame of {pub}#{seq}")


# -- publishers -------------------------------------------------------------------------------


async def publisher(run: Run, index: int, stop: trio.Event) -> None:
    """One event at a time at `--rate` per second, channels and nodes round robin."""
    name = f"p{index + 1}"
    interval = 1.0 / run.opts.rate
    timeout = httpx.Timeout(PUBLISH_TIMEOUT)
    headers = {"X-Api-Key": PUB_KEY, "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=timeout, headers=headers) as http:
        seq = 0
        next_at = trio.current_time() + interval * index / max(1, run.opts.publishers)
        while not stop.is_set():
            await trio.sleep_until(next_at)
            next_at += interval
            seq += 1
            channel = CHANNELS[(seq + index) % len(CHANNELS)]
            targets = [n for n in run.nodes if n.proc is not None]
            if not targets:
                targets = run.nodes
            node = targets[(seq // len(CHANNELS) + index) % len(targets)]
            await publish_one(run, http, node, name, seq, channel)
            # A steady rate: after a slow answer carry on from now, no burst to catch up.
            next_at = max(next_at, trio.current_time())


async def publish_one(
    run: Run, http: httpx.AsyncClient, node: Node, name: str, seq: int, channel: str
) -> None:
    event = {"event_type": channel, "message": "CHAOS", "body": {"pub": name, "seq": seq}}
    content = json.dumps(event, separators=(",", ":")).encode()
    sent_at = run.now()
    status: int | None = None
    event_id: str | None = None
    outcome: Outcome
    why = ""
    try:
        with trio.fail_after(PUBLISH_TIMEOUT * 2):
            response = await http.post(f"{node.url}/v1/events", content=content)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        outcome, why = "refused", type(exc).__name__  # nothing was sent
    except httpx.TransportError as exc:
        outcome, why = "unknown", type(exc).__name__  # sent; no (whole) answer
    except trio.TooSlowError:
        outcome, why = "unknown", "TooSlowError"
    else:
        status = response.status_code
        why = str(status)
        if status == 202:
            try:
                event_id = str(response.json()["id"])
                outcome = "accepted"
            except (ValueError, KeyError, TypeError):
                outcome = "unknown"
        elif status == 504 or (status >= 500 and status != 503):
            outcome = "unknown"
        else:
            outcome = "refused"
        if status != 202:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                why += " " + str(response.json()["error"])
    answered_at = run.now()
    rec = Published(name, seq, channel, outcome, status, event_id, sent_at, answered_at)
    run.record(rec)
    run.outcomes[outcome] += 1
    run.statuses[why] += 1
    if outcome == "accepted":
        run.accepted.append(rec)
    else:
        run.log(f"{name}#{seq} {channel} -> {node.name}: {outcome} ({why})")


# -- subscribers -------------------------------------------------------------------------------


@dataclass
class Sub:
    """One subscriber and what the harness tracks of it for draining and the summary."""

    name: str
    index: int
    channels: tuple[str, ...]
    relay: Relay
    subscribed_at: float | None = None
    all_channels: frozenset[str] = frozenset()
    received: set[tuple[str, int]] = field(default_factory=set)
    events: int = 0
    duplicates: int = 0
    last_id: str | None = None
    last_flag_at: float | None = None
    flags: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    resumes: int = 0
    failures: list[str] = field(default_factory=list)
    scope: trio.CancelScope | None = None
    ended: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    # Drain bookkeeping: events still awaited, and how far `Run.accepted` was looked at.
    pending: dict[tuple[str, int], Published] = field(default_factory=dict)
    looked_at: int = 0

    def on_notice(self, run: Run, notice: Notice) -> None:
        at = run.now()
        match notice:
            case Connected():
                self.connects += 1
                node = self.relay.node.name if self.relay.node is not None else "?"
                run.log(
                    f"{self.name} connected to {node} client_id={notice.client_id} "
                    f"resumed_from={notice.resumed_from} reconnects={notice.reconnects}"
                )
                if self.subscribed_at is None:
                    self.subscribed_at = at
                    self.all_channels = frozenset(notice.subscriptions)
                    run.record(Subscribed(self.name, tuple(notice.subscriptions), at))
            case Gap():
                self.flags[notice.reason] += 1
                self.last_flag_at = at
                run.record(Flagged(self.name, notice.reason, at, notice.dropped))
                run.log(f"{self.name} GAP {notice}")
            case Resumed():
                self.resumes += 1
                run.log(f"{self.name} resumed after {notice.after[:24]}…: {notice.replayed}")
            case Reconnecting():
                run.log(f"{self.name} reconnecting ({notice.cause}) in {notice.delay:.2f} s")
            case _:
                run.log(f"{self.name} notice {notice}")

    def on_event(self, run: Run, event: Event) -> None:
        at = run.now()
        body = event.body
        if not isinstance(body, dict) or "pub" not in body or "seq" not in body:
            run.log(f"{self.name} got a foreign event {event.id}: {event.body!r:.100}")
            return
        key = (str(body["pub"]), int(body["seq"]))
        self.events += 1
        if key in self.received:
            self.duplicates += 1
            run.log(f"{self.name} DUPLICATE {key[0]}#{key[1]} replayed={event.replayed}")
        self.received.add(key)
        self.last_id = event.id
        run.record(Received(self.name, key[0], key[1], event.event_type, event.id, at))

    def outstanding(self, run: Run) -> list[Published]:
        """Accepted events of its channels published since it subscribed that it has
        neither received nor been told it may have missed."""
        if self.subscribed_at is None:
            return []
        for rec in run.accepted[self.looked_at :]:
            if rec.channel in self.all_channels and rec.sent_at >= self.subscribed_at:
                self.pending[(rec.publisher, rec.seq)] = rec
        self.looked_at = len(run.accepted)
        for key in [k for k in self.pending if k in self.received]:
            del self.pending[key]
        flag = self.last_flag_at
        return [p for p in self.pending.values() if flag is None or p.sent_at > flag]


def subscriber_channels(index: int) -> tuple[str, ...]:
    """Half on every channel, the others on one of them (and `global`, always)."""
    return (
        ("pdfm", "orchestrator"),
        ("pdfm",),
        ("orchestrator",),
        ("pdfm", "orchestrator"),
        (),
        ("pdfm", "orchestrator"),
    )[index % 6]


async def subscriber(run: Run, sub: Sub) -> None:
    """Subscribe through the relay and record everything until the harness ends it. A
    subscription that fails for good (which a correct client and server never do here) is
    logged and opened again from the last event received."""
    client = HubClient(sub.relay.url, Credentials(token=SUB_TOKEN), timeout=CONNECT_TIMEOUT)
    try:
        while not sub.ended:
            with trio.CancelScope() as scope:
                sub.scope = scope
                if sub.ended:
                    scope.cancel()
                try:
                    async with client.subscribe(
                        list(sub.channels),
                        since=sub.last_id,
                        heartbeat=HEARTBEAT,
                        backoff=BACKOFF,
                        dead_after=DEAD_AFTER,
                        on_notice=lambda notice: sub.on_notice(run, notice),
                    ) as subscription:
                        async for event in subscription:
                            sub.on_event(run, event)
                        sub.failures.append(f"t={run.now():.1f} the iteration ended")
                except ClientError as exc:
                    text = f"t={run.now():.1f} {type(exc).__name__}: {exc}"
                    sub.failures.append(text)
                    run.log(f"{sub.name} subscription failed: {text}")
                    await trio.sleep(0.5)
            if scope.cancelled_caught:
                break
    finally:
        sub.done.set()


# -- faults ------------------------------------------------------------------------------------


@dataclass
class FaultEntry:
    kind: str
    target: str
    start: float
    end: float
    detail: str


class Faults:
    def __init__(self, run: Run, rng: random.Random) -> None:
        self.run = run
        self.rng = rng
        self.long_stop_done = False
        self.slow_windows: list[tuple[Sub, float, float]] = []

    async def loop(self, until: float) -> None:
        run = self.run
        kinds = list(run.opts.faults)
        if not kinds:
            return
        await trio.sleep_until(run.t0 + WARMUP)
        bag: list[str] = []
        count = 0
        while run.opts.max_faults is None or count < run.opts.max_faults:
            if trio.current_time() >= until - LAST_FAULT_BEFORE_END:
                break
            if not bag:
                bag = list(kinds)
                self.rng.shuffle(bag)
            kind = bag.pop()
            await self.inject(kind)
            count += 1
            await self.recover()
            await trio.sleep(self.rng.uniform(*GAP))

    async def inject(self, kind: str) -> None:
        entry = FaultEntry(
            kind, "", self.run.now(), self.run.now(), "cut short by the end of the run"
        )
        self.run.faults.append(entry)
        try:
            await self._inject(kind, entry)
        finally:
            entry.end = self.run.now()
            self.run.log(f"fault {kind} {entry.target} done: {entry.detail}")

    async def _inject(self, kind: str, entry: FaultEntry) -> None:
        """Inject one fault and undo it; `entry` gets its target, then what happened."""
        run = self.run
        detail = ""
        if kind == "kill":
            node = self.rng.choice([n for n in run.nodes if n.state == "up"])
            entry.target = node.name
            run.say(f"fault kill: SIGKILL {node.name}")
            await node.kill(run.now())
            down = self.rng.uniform(*KILL_DOWN)
            await trio.sleep(down)
            node.start(run.now())
            t = trio.current_time()
            ready = await wait_node_ready(run.http, node, RECOVERY_TIMEOUT)
            detail = f"down {down:.1f} s, ready {'after' if ready else 'NOT within'} "
            detail += f"{trio.current_time() - t:.1f} s"
        elif kind == "stop":
            node = self.rng.choice([n for n in run.nodes if n.state == "up"])
            entry.target = node.name
            long = not self.long_stop_done
            self.long_stop_done = True
            pause = STOP_LONG if long else self.rng.uniform(*STOP_SHORT)
            run.say(f"fault stop: SIGSTOP {node.name} for {pause:.1f} s")
            node.stop()
            try:
                await trio.sleep(pause)
            finally:
                node.cont()
            detail = f"stopped {pause:.1f} s" + (" (> idle timeout)" if long else "")
        elif kind == "redis":
            entry.target = "redis"
            run.say("fault redis: SIGKILL redis-server")
            await run.redis.kill()
            down = self.rng.uniform(*REDIS_DOWN)
            await trio.sleep(down)
            run.redis.start()
            t = trio.current_time()
            ready = await run.redis.wait_ready(RECOVERY_TIMEOUT)
            detail = f"down {down:.1f} s, PONG {'after' if ready else 'NOT within'} "
            detail += f"{trio.current_time() - t:.1f} s"
        elif kind == "slow":
            busiest = [s for s in run.subs if set(CHANNELS) <= s.all_channels]
            sub = self.rng.choice(busiest or run.subs)
            entry.target = sub.name
            pause = run.opts.slow_pause
            run.say(f"fault slow: {sub.name}'s relay stops reading for {pause:.1f} s")
            sub.relay.pause()
            try:
                await trio.sleep(pause)
            finally:
                sub.relay.resume()
            self.slow_windows.append((sub, entry.start, run.now()))
            detail = f"paused {pause:.1f} s"
        elif kind == "storm":
            entry.target = "all"
            cut = sum(relay.cut() for relay in run.relays)
            run.say(f"fault storm: cut {cut} connection(s)")
            detail = f"cut {cut} connection(s)"
        else:
            raise ValueError(kind)
        entry.detail = detail

    async def recover(self) -> None:
        """Everything back and answering: redis PONG, every node ready."""
        await restore(self.run)


async def restore(run: Run) -> None:
    """Undo whatever a fault left behind and wait (bounded) until everything answers."""
    for relay in run.relays:
        relay.resume()
    if not run.redis.up:
        run.redis.proc = None
        run.redis.start()
    for node in run.nodes:
        if node.state == "stopped":
            node.cont()
        elif node.proc is None or node.proc.poll() is not None:
            node.proc = None
            node.start(run.now())
    if not await run.redis.wait_ready(RECOVERY_TIMEOUT):
        run.say("WARNING: redis-server does not answer PING")
    for node in run.nodes:
        if not await wait_node_ready(run.http, node, RECOVERY_TIMEOUT):
            run.say(f"WARNING: {node.name} is not ready after {RECOVERY_TIMEOUT:.0f} s")


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Options:
    seconds: float
    faults: tuple[str, ...]
    max_faults: int | None
    nodes: int
    subscribers: int
    publishers: int
    rate: float
    out: Path | None
    seed: int
    lossy: float
    drain_timeout: float
    queue_size: int
    slow_pause: float
    run_dir: Path | None
    flag_window: int
    redis_persistence: str = "aof"


class Interrupted(Exception):
    pass


async def watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            raise Interrupted(f"signal {signal.Signals(signum).name}")


async def drain(run: Run) -> float:
    """Wait until every subscriber has received, or been told it may have missed, every
    accepted event it should get; or until nobody has received anything for a while
    (events that never come), or the drain timeout. Returns the seconds it took."""
    start = trio.current_time()
    last_total = -1
    quiet_since = start
    with trio.move_on_after(run.opts.drain_timeout):
        while True:
            missing = {s.name: len(s.outstanding(run)) for s in run.subs}
            if not any(missing.values()):
                break
            total = sum(s.events for s in run.subs)
            if total != last_total:
                last_total, quiet_since = total, trio.current_time()
            elif trio.current_time() - quiet_since >= 8.0:
                run.log(f"drain: nothing arrives any more; still missing {missing}")
                break
            await trio.sleep(0.5)
    return trio.current_time() - start


async def main_async(opts: Options, run_dir: Path, procs: Processes) -> int:
    run = Run(opts, run_dir, procs)
    rng = random.Random(opts.seed)
    try:
        # Every step is bounded on its own; this only guards against a bug of the harness.
        with trio.fail_after(opts.seconds + OVERRUN):
            return await _main(run, rng)
    except trio.TooSlowError:
        run.say(f"ERROR: the run overran its bound ({opts.seconds:g} s + {OVERRUN:g} s)")
        return 2
    finally:
        await run.aclose()


async def _main(run: Run, rng: random.Random) -> int:
    opts = run.opts
    async with trio.open_nursery() as top:
        top.start_soon(watch_signals)
        run.redis.start()
        if not await run.redis.wait_ready(RECOVERY_TIMEOUT):
            raise RuntimeError(f"redis-server did not start; see {run.redis.log}")
        for node in run.nodes:
            node.start(run.now())
        for node in run.nodes:
            if not await wait_node_ready(run.http, node, RECOVERY_TIMEOUT):
                raise RuntimeError(f"{node.name} did not become ready; see {node.log}")
        run.say(
            f"redis-server on {run.redis.port}, nodes "
            + ", ".join(f"{n.name} on {n.port}" for n in run.nodes)
        )

        # Subscribers, each behind its relay.
        for i in range(opts.subscribers):
            name = f"s{i + 1:02d}"
            lossy = opts.lossy if opts.lossy > 0 and i % 3 == 2 else 0.0
            relay = Relay(run, name, i, i % opts.nodes, lossy, random.Random(opts.seed * 1000 + i))
            await top.start(relay.serve)
            run.relays.append(relay)
            run.subs.append(Sub(name, i, subscriber_channels(i), relay))
        async with trio.open_nursery() as sub_tasks:
            for sub in run.subs:
                sub_tasks.start_soon(subscriber, run, sub)
            with trio.move_on_after(RECOVERY_TIMEOUT):
                while any(s.subscribed_at is None for s in run.subs):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            late = [s.name for s in run.subs if s.subscribed_at is None]
            if late:
                raise RuntimeError(f"subscribers {', '.join(late)} did not connect")
            lossy_names = [s.name for s in run.subs if s.relay.lossy > 0]
            run.say(
                f"{len(run.subs)} subscribers connected"
                + (
                    f"; lossy relays ({opts.lossy:g}): {', '.join(lossy_names)}"
                    if lossy_names
                    else ""
                )
            )

            # Publishers and faults.
            stop_publishing = trio.Event()
            end_at = trio.current_time() + opts.seconds
            faults = Faults(run, random.Random(rng.random()))
            async with trio.open_nursery() as pubs:
                for i in range(opts.publishers):
                    pubs.start_soon(publisher, run, i, stop_publishing)
                with trio.move_on_at(end_at):
                    await faults.loop(end_at)
                    await trio.sleep_until(end_at)
                run.say("end of the fault period: restoring everything")
                await restore(run)
                # A little undisturbed traffic after the last fault.
                await trio.sleep(2.0)
                stop_publishing.set()
            run.say(
                f"publishing stopped: {sum(run.outcomes.values())} attempts, "
                + ", ".join(f"{k} {v}" for k, v in sorted(run.outcomes.items()))
            )
            took = await drain(run)
            left = {s.name: n for s in run.subs if (n := len(s.outstanding(run)))}
            run.say(f"drained in {took:.1f} s" + (f"; still missing: {left}" if left else ""))
            for sub in run.subs:
                sub.ended = True
                run.record(Ended(sub.name, run.now()))
                if sub.scope is not None:
                    sub.scope.cancel()
        stats = await node_stats(run)
        top.cancel_scope.cancel()
    for node in run.nodes:
        await node.terminate()
    return report(run, faults, stats)


async def node_stats(run: Run) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for node in run.nodes:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            response = await run.http.get(f"{node.url}/v1/ws/stats", headers={"X-Api-Key": PUB_KEY})
            body = response.json()
            out[node.name] = {
                k: body.get(k) for k in ("uptime_seconds", "published", "delivered", "dropped")
            }
    return out


def log_problems(path: Path) -> Counter[str]:
    """What a node's log says about the faults, and anything unexpected in it."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "Traceback" in line:
                found["TRACEBACKS"] += 1
            if " ERROR " in line:
                if "backplane lost" in line:
                    found["backplane lost"] += 1
                else:
                    found["OTHER ERROR LINES"] += 1
            if "missed while not subscribed" in line:
                found["catch-ups"] += 1
            if "new epoch" in line:
                found["NEW EPOCH"] += 1
    return found


def late_receipts(records: Sequence[Record]) -> Counter[str]:
    """Receipts below the highest seq already received from the same publisher, by the
    outcome of their publish. An `unknown` one is a request that timed out (a stopped
    node) and was carried out later: hubd orders only requests sent after the previous
    one was answered, so that one may come after the publisher's next events."""
    outcome = {(r.publisher, r.seq): r.outcome for r in records if isinstance(r, Published)}
    highest: dict[tuple[str, str], int] = {}
    late: Counter[str] = Counter()
    for r in records:
        if isinstance(r, Received):
            key = (r.subscriber, r.publisher)
            if r.seq < highest.get(key, -1):
                late[outcome.get((r.publisher, r.seq), "no publish")] += 1
            highest[key] = max(highest.get(key, -1), r.seq)
    return late


def report(run: Run, faults: Faults, stats: dict[str, dict[str, Any]]) -> int:
    opts = run.opts
    out = opts.out or run.run_dir / "records.jsonl"
    dump_jsonl(run.records, out)
    result = check(run.records, flag_window=opts.flag_window)
    print()
    print("faults:")
    for f in run.faults:
        extra = ""
        sub = next((s for s in run.subs if s.name == f.target), None)
        if f.kind == "slow" and sub is not None:
            dropped = [
                r
                for r in run.records
                if isinstance(r, Flagged)
                and r.subscriber == sub.name
                and r.reason == "dropped_by_server"
                and f.start <= r.at <= f.end + 15.0
            ]
            extra = (
                f"; overflow flagged ({sum(r.dropped or 0 for r in dropped)} dropped)"
                if dropped
                else "; no overflow flagged"
            )
        print(f"  t={f.start:7.1f}..{f.end:7.1f}  {f.kind:5} {f.target:5} {f.detail}{extra}")
    counts = Counter(f.kind for f in run.faults)
    print("fault counts: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in FAULT_KINDS))
    print(
        "publishes: "
        + ", ".join(f"{k} {v}" for k, v in sorted(run.outcomes.items()))
        + "  ("
        + ", ".join(f"{k}: {v}" for k, v in run.statuses.most_common())
        + ")"
    )
    flagged = Counter(r.reason for r in run.records if isinstance(r, Flagged))
    print(
        f"subscribers: {sum(s.events for s in run.subs)} events received, "
        f"{sum(s.duplicates for s in run.subs)} duplicate(s), "
        f"{sum(s.connects for s in run.subs) - len(run.subs)} reconnect(s), "
        f"{sum(s.resumes for s in run.subs)} complete resume(s), gaps flagged: "
        + (", ".join(f"{k} {v}" for k, v in flagged.items()) or "none")
    )
    late = late_receipts(run.records)
    if late:
        print(
            "receipts after a later event of the same publisher, by publish outcome: "
            + ", ".join(f"{k} {v}" for k, v in sorted(late.items()))
        )
    failures = [f"{s.name}: {f}" for s in run.subs for f in s.failures]
    for text in failures:
        print(f"  subscription failure {text}")
    if opts.lossy > 0:
        print(f"lossy relays swallowed {len(run.swallowed)} event frame(s)")
    for node in run.nodes:
        problems = log_problems(node.log)
        print(
            f"{node.name}: {node.lives} start(s), stats {stats.get(node.name, {})}, "
            + (", ".join(f"{k} {v}" for k, v in sorted(problems.items())) or "nothing logged")
        )
    print()
    print(result.table())
    print()
    print(f"records: {out}")
    print(f"logs: {run.run_dir}")
    (run.run_dir / "report.json").write_text(
        json.dumps(result.to_json(), indent=2), encoding="utf-8"
    )
    summary = {
        "seed": opts.seed,
        "ok": bool(result.ok),
        "records": str(out),
        "fault_counts": {k: counts.get(k, 0) for k in FAULT_KINDS},
        "faults": [vars(f) for f in run.faults],
        "publishes": dict(run.outcomes),
        "received": sum(s.events for s in run.subs),
        "duplicates_seen": sum(s.duplicates for s in run.subs),
        "flagged": dict(flagged),
        "swallowed": len(run.swallowed),
        "late_receipts": dict(late),
        "subscription_failures": failures,
        "node_stats": stats,
    }
    (run.run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print("result: " + ("OK, no silent loss" if result.ok else "FAILED"))
    return 0 if result.ok else 1


# -- the command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="A hubd cluster under faults, checked event by event for silent loss.",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=3.0, help="fault period (default 3)")
    length.add_argument("--seconds", type=float, help="fault period in seconds (for tests)")
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}, or 'none' (default: all)",
    )
    parser.add_argument(
        "--max-faults", type=int, help="inject at most this many faults (default: no limit)"
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=12)
    parser.add_argument("--publishers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20.0, help="events/s per publisher")
    parser.add_argument("--out", type=Path, help="write every record here (JSON lines)")
    parser.add_argument("--seed", type=int, help="fault schedule seed (default: random)")
    parser.add_argument(
        "--lossy-relay",
        type=float,
        nargs="?",
        const=0.001,
        default=0.0,
        metavar="P",
        help="a third of the relays swallow each event frame with probability P "
        "(default when given: 0.001): the checker must then fail",
    )
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument(
        "--redis-persistence",
        choices=("aof", "none"),
        default="aof",
        help="aof (default): Redis fsyncs every write, so a Redis kill loses nothing "
        "accepted; none: a Redis kill loses its data (a new epoch), which every subscriber "
        "must be told about",
    )
    parser.add_argument(
        "--queue-size", type=int, default=64, help="hub.queue_size of the nodes (default 64)"
    )
    parser.add_argument(
        "--slow-pause",
        type=float,
        default=6.0,
        help="seconds a `slow` fault stalls a relay (below the nodes' 10 s TCP_USER_TIMEOUT)",
    )
    parser.add_argument("--run-dir", type=Path, help="directory for logs (default: a new temp dir)")
    parser.add_argument(
        "--flag-window",
        type=int,
        default=None,
        help="passed to bench.checker.check(): how many observations after a hole a loss "
        "signal still covers it (default 8 x --queue-size: hubd says `events_dropped` once "
        "the client has drained its queue, so a signal further away excuses nothing)",
    )
    args = parser.parse_args(list(argv))
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip() and f.strip() != "none")
    unknown = [f for f in faults if f not in FAULT_KINDS]
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULT_KINDS)}")
    if args.nodes < 1 or args.subscribers < 1 or args.publishers < 1 or args.rate <= 0:
        parser.error("--nodes, --subscribers, --publishers and --rate must be positive")
    if not 0.0 <= args.lossy_relay <= 1.0:
        parser.error("--lossy-relay takes a probability between 0 and 1")
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    return Options(
        seconds=seconds,
        faults=faults,
        max_faults=args.max_faults,
        nodes=args.nodes,
        subscribers=args.subscribers,
        publishers=args.publishers,
        rate=args.rate,
        out=args.out,
        seed=seed,
        lossy=args.lossy_relay,
        drain_timeout=args.drain_timeout,
        queue_size=args.queue_size,
        slow_pause=args.slow_pause,
        run_dir=args.run_dir,
        flag_window=args.flag_window if args.flag_window is not None else 8 * args.queue_size,
        redis_persistence=args.redis_persistence,
    )


@contextlib.contextmanager
def client_logging(run_dir: Path) -> Iterator[None]:
    """The client library's log lines (reconnects, gaps) go to client.log."""
    logger = logging.getLogger("hubd.client")
    handler = logging.FileHandler(run_dir / "client.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.run_dir is not None:
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        run_dir = opts.run_dir
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="hubd-chaos-"))
    print(
        f"chaos: seed {opts.seed}, {opts.seconds:g} s, faults "
        f"{','.join(opts.faults) or 'none'}, {opts.nodes} nodes, {opts.subscribers} subscribers, "
        f"{opts.publishers} publishers x {opts.rate:g}/s, Redis persistence "
        f"{opts.redis_persistence}; logs in {run_dir}",
        flush=True,
    )
    procs = Processes()
    try:
        with client_logging(run_dir):
            return trio.run(main_async, opts, run_dir, procs)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BaseExceptionGroup as group:
        # Ctrl-C (trio raises it inside whichever task runs) or SIGTERM/SIGHUP.
        interrupted, rest = group.split((Interrupted, KeyboardInterrupt))
        if interrupted is None or rest is not None:
            raise
        print(f"interrupted: {_leaves(interrupted)[0]!r}", file=sys.stderr)
        return 130
    finally:
        procs.reap_all()
        print(f"logs: {run_dir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
