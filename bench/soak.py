"""`python -m bench.soak`: many subscriber connections held for minutes; does hubd stay flat?

Starts its own `hubd serve` (in-memory hub) on a free loopback port, opens `--connections`
WebSocket subscribers (10,000 by default) from distinct source addresses 127.40.0.1,
127.40.0.2, ... (never 127.0.0.1; the server allows one connection per client IP), at most
`--connect-concurrency` handshakes at a time, and holds them for `--minutes` (16): every
connection sends the protocol's JSON health ping every `--ping-every` seconds (below
`hub.idle_timeout`) and reads everything it receives, while one event per second
(`--rate`) is published on `pdfm`, which every connection subscribes to.

Every `--every` seconds (10) it samples the daemon's RSS (VmRSS in /proc/<pid>/status),
its open descriptors (/proc/<pid>/fd), its trio task count (`tasks` in
`GET /v1/ws/stats`) and the blocks its Python objects hold (`allocated_blocks`, same
answer), taken between two publishes once every connection has read the last event, so
that no transient writer task is counted. It prints a line per sample, then a per-minute
table and the least-squares slopes of those four lines after a warm-up (`--warmup`, 6
minutes: connection set-up, the history filling and the memory allocator settling, which
steps RSS up for ~4 minutes under a steady load), with a verdict: "flat" when each slope
stays within its tolerance. The samples and the summary go to `--out` as JSON.

The exit status is 0 when every connection lasted the whole run, every event and pong
arrived, every publish was accepted and the lines are flat; 1 otherwise; 130 when
interrupted. hubd and every connection are stopped on exit, Ctrl-C and errors included.

    python -m bench.soak                  # 10,000 connections: 6 min warm-up, then 10 min judged
    python -m bench.soak --connections 2000 --minutes 2 --warmup 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.daemon import terminate, wait_ready
from bench.loadgen import SEQ, Client, http_request, rss_kb

ROOT = Path(__file__).resolve().parent.parent
HUBD = Path(sys.executable).with_name("hubd")

SUB_TOKEN = "soak-sub"
ADMIN_TOKEN = "soak-admin"
SUB_PATH = "/v1/ws/subscribe?event_types=pdfm,health"
IDLE_TIMEOUT = 60.0  # hub.idle_timeout of the daemon (its default)
# Each channel keeps this many events for resuming clients. Kept small so that the history
# is full within the warm-up: a history still filling up at 1 event/s would be a rise of
# RSS that is not a leak (the default, 1000, takes almost 17 minutes to fill).
HISTORY_SIZE = 100

CONFIG = f"""
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = 5.0
[hub]
idle_timeout = {IDLE_TIMEOUT}
history_size = {HISTORY_SIZE}
[limits]
max_connections = {{max_connections}}
[log]
level = "info"
[[auth.tokens]]
name = "{SUB_TOKEN}"
token = "{SUB_TOKEN}"
roles = ["subscriber"]
[[auth.tokens]]
name = "{ADMIN_TOKEN}"
token = "{ADMIN_TOKEN}"
roles = ["admin"]
"""


def source_address(i: int) -> str:
    """The i-th subscriber's source address: 127.40.0.1, 127.40.0.2, ... (250 per /24,
    250 /24s per /16, then 127.41.0.0/16 and on)."""
    return f"127.{40 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


# -- the figures (pure: tests/unit/test_soak_stats.py) ---------------------------------------


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ys over xs (0.0 when xs do not vary)."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


@dataclass(frozen=True)
class Line:
    """One figure's slope after the warm-up and whether it is within its tolerance."""

    name: str
    unit: str  # of the slope: "KiB/min", "fds/min", "tasks/min"
    slope_per_min: float
    limit_per_min: float
    mean: float

    @property
    def flat(self) -> bool:
        return abs(self.slope_per_min) <= self.limit_per_min


@dataclass(frozen=True)
class Flatness:
    warmup_s: float
    samples: int
    span_s: float
    lines: tuple[Line, ...]
    # Why no verdict could be given (too few samples), else None.
    problem: str | None = None

    @property
    def flat(self) -> bool:
        return self.problem is None and all(line.flat for line in self.lines)

    @property
    def verdict(self) -> str:
        if self.problem is not None:
            return f"no verdict: {self.problem}"
        if self.flat:
            return "flat"
        return "not flat: " + ", ".join(line.name for line in self.lines if not line.flat)


MIN_SAMPLES = 3


def flatness(
    samples: Sequence[Mapping[str, Any]],
    *,
    warmup_s: float = 120.0,
    rss_pct_per_10min: float = 1.0,
    count_per_10min: float = 5.0,
) -> Flatness:
    """Slopes of RSS, Python heap blocks, descriptors and tasks over the samples taken at
    `t` >= `warmup_s` (`t` in seconds; `rss_kib`, `blocks`, `fds`, `tasks` per sample),
    per minute, and whether they are flat:

    - RSS and heap blocks (`sys.getallocatedblocks()` in hubd: what Python objects
      hold, whatever the allocator keeps): each slope over 10 minutes stays within
      `rss_pct_per_10min` percent of that line's mean (1 % of 400 MiB: 410 KiB/min);
    - descriptors and tasks: their slope over 10 minutes stays within `count_per_10min`
      (5: half a descriptor or task a minute; a leak of one per connection, or one per
      ping or publish, is far steeper).

    Needs at least 3 samples after the warm-up spanning some time, else `problem` says
    why and the verdict is not flat."""
    used = [s for s in samples if s["t"] >= warmup_s]
    minutes = [s["t"] / 60.0 for s in used]
    span = (max(s["t"] for s in used) - min(s["t"] for s in used)) if used else 0.0
    problem = None
    if len(used) < MIN_SAMPLES or span <= 0:
        problem = f"{len(used)} sample(s) after a {warmup_s:g} s warm-up; need {MIN_SAMPLES}"

    def line(name: str, key: str, unit: str, limit: float | None) -> Line:
        values = [float(s[key]) for s in used]
        mean = statistics.fmean(values) if values else 0.0
        per_min = slope(minutes, values) if problem is None else 0.0
        limit_per_min = (limit if limit is not None else mean * rss_pct_per_10min / 100) / 10
        return Line(name, unit, per_min, limit_per_min, mean)

    return Flatness(
        warmup_s=warmup_s,
        samples=len(used),
        span_s=span,
        lines=(
            line("RSS", "rss_kib", "KiB/min", None),
            line("heap blocks", "blocks", "blocks/min", None),
            line("fds", "fds", "fds/min", count_per_10min),
            line("tasks", "tasks", "tasks/min", count_per_10min),
        ),
        problem=problem,
    )


def per_minute(samples: Sequence[Mapping[str, Any]], minutes: int) -> list[dict[str, Any]]:
    """For each minute 0..minutes of the hold, the sample taken closest to it."""
    rows: list[dict[str, Any]] = []
    if not samples:
        return rows
    for m in range(minutes + 1):
        nearest = min(samples, key=lambda s: abs(s["t"] - 60 * m))
        if abs(nearest["t"] - 60 * m) <= 30 and (not rows or rows[-1]["t"] != nearest["t"]):
            rows.append({"minute": m, **nearest})
    return rows


# -- the daemon ----------------------------------------------------------------------------


def raise_nofile(want: int) -> None:
    """Raise this process' open-file soft limit to `want` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        raise SystemExit(
            f"bench.soak: needs {want} open files, the hard limit is {hard}: "
            "lower --connections or raise `ulimit -Hn`"
        )


def _child_setup() -> None:
    """In hubd's process before exec: its open-file limit to the hard limit (the systemd
    unit's LimitNOFILE would do it), and SIGTERM should this process die without
    cleaning up (killed with SIGKILL)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = 65536 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Daemon:
    """`hubd serve` on a free loopback port, its log in a temporary file."""

    def __init__(self, max_connections: int) -> None:
        fd, self.config = tempfile.mkstemp(suffix=".toml", prefix="hubd-soak-")
        with os.fdopen(fd, "w") as f:
            f.write(CONFIG.format(max_connections=max_connections))
        self.log = self.config.replace(".toml", ".log")
        with open(self.log, "w") as log:
            # Its own session: a Ctrl-C reaches this process only, which stops hubd itself.
            self.proc = subprocess.Popen(
                [str(HUBD), "serve", "--config", self.config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
                preexec_fn=_child_setup,
                start_new_session=True,
            )
        self.port = wait_ready(self.proc, self.log, 30)
        if not self.port:
            self.stop(keep_log=True)
            raise SystemExit(f"bench.soak: hubd did not start; see {self.log}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_counts(self) -> dict[str, int]:
        text = Path(self.log).read_text(errors="replace")
        lines = text.splitlines()
        return {
            "tracebacks": text.count("Traceback"),
            "error_lines": sum(" ERROR " in line for line in lines),
            "warning_lines": sum(" WARNING " in line for line in lines),
        }

    def stop(self, keep_log: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit status (None if it was killed)."""
        code = terminate(self.proc, 15)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config)
        if not keep_log:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.log)
        return code


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the connections -----------------------------------------------------------------------


@dataclass(slots=True)
class Conn:
    index: int
    connected: bool = False
    events: int = 0
    last_seq: int = -1
    gaps: int = 0  # an event skipped (or reordered)
    duplicates: int = 0
    pings: int = 0
    pongs: int = 0
    other: int = 0  # the confirmation, notices, errors
    # How it ended before the soak closed it: a close frame, EOF or an error.
    lost: str | None = None
    lost_at: float | None = None


@dataclass
class Soak:
    """Everything the run measures, shared by its tasks."""

    args: argparse.Namespace
    port: int
    proc: subprocess.Popen[bytes]
    run: str = field(default_factory=lambda: os.urandom(4).hex())
    conns: list[Conn] = field(default_factory=list)
    phase: str = "setup"
    connect_start: float = 0.0
    hold_start: float | None = None
    stopping: bool = False  # the soak itself closes the connections from now on
    pinging: bool = True
    published: int = 0
    publish_errors: Counter[str] = field(default_factory=Counter)
    connect_errors: Counter[str] = field(default_factory=Counter)
    connect_seconds: float | None = None
    events_total: int = 0
    pings_total: int = 0
    pongs_total: int = 0
    lost_total: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # since the last sample
    samples: list[dict[str, Any]] = field(default_factory=list)
    ramp: list[dict[str, Any]] = field(default_factory=list)  # while connecting
    died: str | None = None
    interrupted: str | None = None
    # Held while sampling: the publisher waits, so no delivery is in flight.
    quiet: trio.Lock = field(default_factory=trio.Lock)
    stats_stream: trio.SocketStream | None = None

    def now(self) -> float:
        """Seconds since the hold began (while connecting: since connecting began)."""
        start = self.hold_start if self.hold_start is not None else self.connect_start
        return trio.current_time() - start

    def alive(self) -> int:
        return sum(c.connected and c.lost is None for c in self.conns)

    def lagging(self) -> int:
        """Connections that have not yet read every accepted event."""
        n = self.published
        return sum(c.connected and c.lost is None and c.events < n for c in self.conns)


PING = '{{"event_type":"health","message":"ping","id":"{}"}}'


async def hold(
    soak: Soak, conn: Conn, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Connect (failures raise to the starter), then read and ping until closed."""
    client, _ = await Client.connect(
        "127.0.0.1", soak.port, SUB_PATH, SUB_TOKEN, source_address(conn.index)
    )
    conn.connected = True
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pinger, soak, conn, client)
            reason = await _reader(soak, conn, client)
            if not soak.stopping:
                conn.lost, conn.lost_at = reason, soak.now()
                soak.lost_total += 1
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await client.stream.aclose()


async def _reader(soak: Soak, conn: Conn, client: Client) -> str:
    """Read and count every frame until the connection ends; return how it ended."""
    sampled = conn.index % 100 == 0  # latency from 1 connection in 100
    try:
        while True:
            now_ns = time.perf_counter_ns()
            for opcode, payload in client.frames():
                if opcode == 0x8:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    return f"close frame {code} {payload[2:80].decode(errors='replace')}".strip()
                if opcode != 0x1:
                    conn.other += 1
                    continue
                found = SEQ.search(payload)
                if found is not None and found[3].decode() == soak.run:
                    seq = int(found[1])
                    if seq <= conn.last_seq:
                        conn.duplicates += 1
                        continue
                    if seq != conn.last_seq + 1:
                        conn.gaps += 1
                    conn.last_seq = seq
                    conn.events += 1
                    soak.events_total += 1
                    if sampled:
                        soak.latencies_ms.append((now_ns - int(found[2])) / 1e6)
                elif b'"message":"pong"' in payload:
                    conn.pongs += 1
                    soak.pongs_total += 1
                else:
                    conn.other += 1
            chunk = await client.stream.receive_some(65536)
            if not chunk:
                return "hubd closed the TCP connection"
            client.buffer += chunk
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        return f"connection error {exc!r}"


async def _pinger(soak: Soak, conn: Conn, client: Client) -> None:
    """The protocol's heartbeat: a JSON health ping every --ping-every seconds, the first
    one at a random point of the first interval so that pings are spread evenly."""
    every = soak.args.ping_every
    await trio.sleep(every * (conn.index * 0.6180339887 % 1.0))
    while soak.pinging:
        conn.pings += 1
        soak.pings_total += 1
        try:
            await client.send_text(PING.format(f"{conn.index}-{conn.pings}"))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the reader finds out why
        await trio.sleep(every)


async def connect_all(soak: Soak, nursery: trio.Nursery) -> None:
    """Open every connection, at most --connect-concurrency handshakes at a time; a
    failed one is retried twice, then counted in `connect_errors`."""
    limiter = trio.CapacityLimiter(soak.args.connect_concurrency)

    async def one(conn: Conn) -> None:
        async with limiter:
            for attempt in range(3):
                try:
                    with trio.fail_after(30):
                        await nursery.start(hold, soak, conn)
                    return
                except (OSError, ConnectionError, trio.TooSlowError) as exc:
                    if attempt == 2:
                        soak.connect_errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    else:
                        await trio.sleep(0.5 * (attempt + 1))

    async def progress() -> None:
        while True:
            await trio.sleep(soak.args.every)
            sample = await take_sample(soak)
            soak.ramp.append(sample)
            print(
                f"connecting: {sum(c.connected for c in soak.conns)}/{len(soak.conns)} "
                f"rss={sample['rss_kib'] / 1024:.1f}MiB fds={sample['fds']} "
                f"tasks={sample['tasks']}",
                flush=True,
            )

    soak.connect_start = started = trio.current_time()
    async with trio.open_nursery() as connecting:
        connecting.start_soon(progress)
        async with trio.open_nursery() as handshakes:
            for conn in soak.conns:
                handshakes.start_soon(one, conn)
        connecting.cancel_scope.cancel()
    soak.connect_seconds = trio.current_time() - started


# -- publishing and sampling ---------------------------------------------------------------


def _event(seq: int, run: str) -> bytes:
    body = {"seq": seq, "sent_ns": time.perf_counter_ns(), "run": run}  # the order SEQ expects
    event = {"event_type": "pdfm", "message": "SOAK", "body": body}
    return json.dumps(event, separators=(",", ":")).encode()


async def publisher(soak: Soak) -> None:
    """--rate single-event POSTs a second on one keep-alive connection; waits while a
    sample is taken."""
    interval = 1.0 / soak.args.rate
    stream: trio.SocketStream | None = None
    next_at = trio.current_time()
    try:
        while True:
            async with soak.quiet:
                try:
                    if stream is None:
                        stream = await trio.open_tcp_stream("127.0.0.1", soak.port)
                    with trio.fail_after(10):
                        status, body = await http_request(
                            stream,
                            "POST",
                            "/v1/events",
                            ADMIN_TOKEN,
                            _event(soak.published, soak.run),
                        )
                    if status == 202:
                        soak.published += 1
                    else:
                        soak.publish_errors[f"status {status} {body[:80]!r}"] += 1
                except (
                    OSError,
                    ConnectionError,
                    ValueError,
                    IndexError,
                    trio.BrokenResourceError,
                    trio.TooSlowError,
                ) as exc:
                    soak.publish_errors[type(exc).__name__] += 1
                    if stream is not None:
                        with trio.CancelScope(shield=True):
                            await stream.aclose()
                    stream = None
            next_at += interval
            now = trio.current_time()
            if next_at < now - 1.0:  # far behind (a long sample): do not burst
                next_at = now
            await trio.sleep_until(next_at)
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def hub_stats(soak: Soak) -> dict[str, Any]:
    """`GET /v1/ws/stats` over a keep-alive connection of its own; tried twice, 30 s each,
    then the run is aborted (`Aborted`)."""
    for attempt in range(2):
        try:
            if soak.stats_stream is None:
                soak.stats_stream = await trio.open_tcp_stream("127.0.0.1", soak.port)
            with trio.fail_after(30):
                status, body = await http_request(
                    soak.stats_stream, "GET", "/v1/ws/stats", ADMIN_TOKEN
                )
            if status != 200:
                raise ConnectionError(f"GET /v1/ws/stats answered {status}: {body[:200]!r}")
            value: dict[str, Any] = json.loads(body)
            return value
        except (
            OSError,
            ConnectionError,
            ValueError,
            IndexError,
            trio.BrokenResourceError,
            trio.TooSlowError,
        ) as exc:
            if soak.stats_stream is not None:
                with trio.CancelScope(shield=True):
                    await soak.stats_stream.aclose()
            soak.stats_stream = None
            if attempt == 1:
                why = str(exc) or (
                    "no answer within 30 s" if isinstance(exc, trio.TooSlowError) else ""
                )
                raise Aborted(f"GET /v1/ws/stats failed twice: {type(exc).__name__} {why}") from exc
    raise AssertionError("unreachable")


async def take_sample(soak: Soak, settle: float = 5.0) -> dict[str, Any]:
    """RSS, descriptors and tasks of the daemon, and what the connections saw so far.

    Taken with the publisher held back, once every connection has read the last event
    (for at most `settle` seconds): hubd's writer tasks exist only while they have
    something to write, so a sample during a fan-out would count up to one per
    connection."""
    async with soak.quiet:
        with trio.move_on_after(settle):
            while soak.lagging():  # noqa: ASYNC110 - the generator's own bookkeeping
                await trio.sleep(0.01)
        lagging = soak.lagging()
        t = soak.now()
        code = soak.proc.poll()
        if code is not None:
            raise Aborted(f"hubd exited with status {code}")
        try:
            rss, fds = rss_kb(soak.proc.pid), fd_count(soak.proc.pid)
        except OSError as exc:
            raise Aborted(f"hubd is gone: {exc}") from None
        before = time.perf_counter()
        stats = await hub_stats(soak)
        stats_ms = (time.perf_counter() - before) * 1000
    latencies, soak.latencies_ms = soak.latencies_ms, []
    return {
        "t": round(t, 3),
        "rss_kib": rss,
        "fds": fds,
        "tasks": stats["tasks"],
        "blocks": stats["allocated_blocks"],
        "hub_connections": stats["connections"],
        "alive": soak.alive(),
        "lost": soak.lost_total,
        "published": soak.published,
        "events": soak.events_total,
        "lagging": lagging,
        "pings": soak.pings_total,
        "pongs": soak.pongs_total,
        "hub_dropped": stats["dropped"],
        "latency_p99_ms": _p99(latencies),
        "stats_ms": round(stats_ms, 1),
    }


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return round(values[min(len(values) - 1, int(0.99 * len(values)))], 2)


class Aborted(Exception):
    """The run cannot go on: hubd exited, vanished or stopped answering its stats."""


def print_sample(s: Mapping[str, Any]) -> None:
    p99 = "-" if s["latency_p99_ms"] is None else f"{s['latency_p99_ms']:.1f}"
    print(
        f"t={s['t']:7.1f}s rss={s['rss_kib'] / 1024:7.1f}MiB fds={s['fds']:6d} "
        f"tasks={s['tasks']:6d} blocks={s['blocks']} alive={s['alive']:6d} "
        f"hub_conns={s['hub_connections']:6d} "
        f"published={s['published']:5d} events={s['events']:9d} lagging={s['lagging']} "
        f"pongs={s['pongs']}/{s['pings']} p99={p99}ms stats={s['stats_ms']:.0f}ms",
        flush=True,
    )


async def _watch_signals(soak: Soak, scope: trio.CancelScope) -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does (trio turns SIGINT into
    KeyboardInterrupt itself)."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            soak.interrupted = signal.Signals(signum).name
            scope.cancel()
            return


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    """The exceptions in a (nested) exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def orchestrate(soak: Soak) -> None:
    args = soak.args
    soak.conns = [Conn(i) for i in range(args.connections)]
    try:
        async with trio.open_nursery() as root:
            root.start_soon(_watch_signals, soak, root.cancel_scope)
            async with trio.open_nursery() as held:
                soak.phase = "connect"
                print(
                    f"opening {args.connections} connections "
                    f"({args.connect_concurrency} handshakes at a time) ...",
                    flush=True,
                )
                await connect_all(soak, held)
                connected = sum(c.connected for c in soak.conns)
                print(
                    f"connected {connected}/{args.connections} in {soak.connect_seconds:.1f} s"
                    + (f"; failures: {dict(soak.connect_errors)}" if soak.connect_errors else ""),
                    flush=True,
                )
                soak.phase = "hold"
                soak.hold_start = trio.current_time()
                async with trio.open_nursery() as background:
                    background.start_soon(publisher, soak)
                    samples = int(args.minutes * 60 // args.every)
                    for k in range(samples + 1):
                        await trio.sleep_until(soak.hold_start + k * args.every)
                        sample = await take_sample(soak)
                        soak.samples.append(sample)
                        print_sample(sample)
                    background.cancel_scope.cancel()
                soak.phase = "drain"
                soak.pinging = False
                # The last events and pongs are on their way: wait for them (bounded).
                with trio.move_on_after(15):
                    while soak.lagging() or soak.pongs_total < soak.pings_total:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                soak.stopping = True
                held.cancel_scope.cancel()
            root.cancel_scope.cancel()
    except* Aborted as group:
        soak.died = "; ".join(str(exc) for exc in _leaves(group))
    finally:
        soak.stopping = True
        if soak.stats_stream is not None:
            with trio.CancelScope(shield=True):
                await soak.stats_stream.aclose()


# -- the report ----------------------------------------------------------------------------


def summarize(soak: Soak, flat: Flatness, log: Mapping[str, int]) -> dict[str, Any]:
    args = soak.args
    live = [c for c in soak.conns if c.connected and c.lost is None]
    connected = sum(c.connected for c in soak.conns)
    missing_events = sum(max(0, soak.published - c.events) for c in live)
    lost = [c for c in soak.conns if c.lost is not None]
    failures: list[str] = []
    if soak.died:
        failures.append(soak.died)
    if soak.interrupted:
        failures.append(f"interrupted ({soak.interrupted})")
    if connected < args.connections:
        failures.append(f"{args.connections - connected} connection(s) could not be opened")
    if lost:
        failures.append(f"{len(lost)} connection(s) lost during the run")
    if missing_events:
        failures.append(f"{missing_events} event deliveries missing")
    gaps = sum(c.gaps + c.duplicates for c in soak.conns)
    if gaps:
        failures.append(f"{gaps} events out of order or twice")
    if soak.pongs_total < soak.pings_total:
        failures.append(f"{soak.pings_total - soak.pongs_total} pings not answered")
    if soak.publish_errors:
        failures.append(f"{sum(soak.publish_errors.values())} publish(es) failed")
    if log.get("tracebacks"):
        failures.append(f"{log['tracebacks']} traceback(s) in hubd's log")
    if not flat.flat:
        failures.append(flat.verdict)
    reasons = Counter(c.lost for c in lost)
    return {
        "options": vars(args),
        "run": soak.run,
        "connections": {
            "requested": args.connections,
            "connected": connected,
            "connect_seconds": soak.connect_seconds and round(soak.connect_seconds, 1),
            "connect_errors": dict(soak.connect_errors),
            "lost": len(lost),
            "lost_reasons": dict(reasons.most_common(10)),
            "first_lost_at_s": min(
                (c.lost_at for c in lost if c.lost_at is not None), default=None
            ),
            "alive_at_end": len(live),
        },
        "events": {
            "published": soak.published,
            "received": soak.events_total,
            "missing": missing_events,
            "out_of_order_or_twice": gaps,
            "publish_errors": dict(soak.publish_errors),
        },
        "pings": {"sent": soak.pings_total, "pongs": soak.pongs_total},
        "log": dict(log),
        "per_minute": per_minute(soak.samples, math.floor(args.minutes)),
        "flatness": {
            "verdict": flat.verdict,
            "flat": flat.flat,
            "warmup_s": flat.warmup_s,
            "samples": flat.samples,
            "span_s": flat.span_s,
            "lines": [asdict(line) | {"flat": line.flat} for line in flat.lines],
        },
        "failures": failures,
        "ramp": soak.ramp,
        "samples": soak.samples,
    }


def report_lines(summary: Mapping[str, Any], flat: Flatness) -> Iterator[str]:
    yield ""
    yield "minute  RSS MiB  heap blocks    fds   tasks   alive  events received  p99 ms"
    for row in summary["per_minute"]:
        p99 = "-" if row["latency_p99_ms"] is None else f"{row['latency_p99_ms']:.1f}"
        yield (
            f"{row['minute']:6d}  {row['rss_kib'] / 1024:7.1f}  {row['blocks']:11,d}  "
            f"{row['fds']:5d}  {row['tasks']:6d}"
            f"  {row['alive']:6d}  {row['events']:15d}  {p99:>6}"
        )
    yield ""
    yield (
        f"slopes after a {flat.warmup_s / 60:g} min warm-up "
        f"({flat.samples} samples over {flat.span_s / 60:.1f} min), least squares:"
    )
    for line in flat.lines:
        yield (
            f"  {line.name:<11} {line.slope_per_min:+10.2f} {line.unit:<10} "
            f"(tolerance ±{line.limit_per_min:.2f}; mean {line.mean:,.0f})  "
            + (
                "-"
                if flat.problem is not None
                else "ok"
                if line.flat
                else "RISING"
                if line.slope_per_min > 0
                else "FALLING"
            )
        )
    yield f"verdict: {flat.verdict}"
    c, e, p = summary["connections"], summary["events"], summary["pings"]
    yield (
        f"connections: {c['connected']}/{c['requested']} opened, {c['lost']} lost, "
        f"{c['alive_at_end']} alive at the end"
        + (f" (lost: {c['lost_reasons']})" if c["lost"] else "")
    )
    yield (
        f"events: {e['published']} published, {e['received']} received, {e['missing']} missing; "
        f"pings: {p['sent']} sent, {p['pongs']} pongs"
    )


# -- the command ---------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("--connections", type=int, default=10000, help="default: 10000")
    parser.add_argument(
        "--minutes", type=float, default=16.0, help="the hold, warm-up included; default: 16"
    )
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=6.0,
        help="minutes left out of the slopes; default: 6 (the allocator settles in ~4)",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="events published per second")
    parser.add_argument(
        "--ping-every",
        type=float,
        default=20.0,
        help=f"seconds between a connection's pings (below hub.idle_timeout = {IDLE_TIMEOUT:g})",
    )
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument(
        "--rss-tolerance",
        type=float,
        default=1.0,
        help="flat RSS: its slope over 10 min within this percent of the mean RSS",
    )
    parser.add_argument(
        "--count-tolerance",
        type=float,
        default=5.0,
        help="flat fds and tasks: their slope over 10 min within this many",
    )
    parser.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "hubd-soak.json"),
        help="where the samples and the summary go (JSON)",
    )
    args = parser.parse_args(argv)
    if args.connections < 1:
        parser.error("--connections must be >= 1")
    if not 0 < args.ping_every < IDLE_TIMEOUT:
        parser.error(f"--ping-every must be between 0 and {IDLE_TIMEOUT:g} (hub.idle_timeout)")
    if args.every <= 0 or args.rate <= 0 or args.connect_concurrency < 1:
        parser.error("--every, --rate and --connect-concurrency must be positive")
    if args.warmup < 0 or args.warmup * 60 + MIN_SAMPLES * args.every > args.minutes * 60:
        parser.error(
            f"--warmup ({args.warmup:g} min) leaves fewer than {MIN_SAMPLES} samples of "
            f"--every {args.every:g} s in --minutes {args.minutes:g}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    raise_nofile(args.connections + 1000)
    daemon = Daemon(max_connections=max(2 * args.connections, 10000))
    print(
        f"hubd pid {daemon.pid} on 127.0.0.1:{daemon.port}; {args.connections} connections "
        f"held {args.minutes:g} min, a sample every {args.every:g} s",
        flush=True,
    )
    soak = Soak(args=args, port=daemon.port, proc=daemon.proc)
    summary: dict[str, Any] | None = None
    keep_log = True
    try:
        trio.run(orchestrate, soak)
    except* KeyboardInterrupt:
        soak.interrupted = "Ctrl-C"
        print("interrupted: stopping hubd", file=sys.stderr, flush=True)
    finally:
        log = daemon.log_counts()
        flat = flatness(
            soak.samples,
            warmup_s=args.warmup * 60,
            rss_pct_per_10min=args.rss_tolerance,
            count_per_10min=args.count_tolerance,
        )
        summary = summarize(soak, flat, log)
        keep_log = bool(summary["failures"] or log["tracebacks"] or log["error_lines"])
        exit_code = daemon.stop(keep_log=keep_log)
        summary["hubd_exit_status"] = exit_code
        with open(args.out, "w") as out:
            json.dump(summary, out, indent=1)
    for line in report_lines(summary, flat):
        print(line)
    print(f"hubd's log: {log}" + (f", kept at {daemon.log}" if keep_log else ""))
    print(f"samples: {args.out}")
    if summary["failures"]:
        print("FAILED: " + "; ".join(summary["failures"]))
        return 130 if soak.interrupted else 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
