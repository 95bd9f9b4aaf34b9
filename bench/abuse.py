"""`python -m bench.abuse`: legitimate traffic while hostile clients attack, phase by phase.

Starts its own `hubd serve` on a free loopback port and keeps, for the whole run, legitimate
subscribers (127.20.x.y) and a publisher (127.20.0.1) sending events at a steady rate, each
event carrying a sequence number and its send time. Three phases of equal length:

- `before`: quiet baseline;
- `during`: a separate process attacks from 127.10-13.x.y: slowloris connections dribbling
  header bytes and never finishing their request, connect-and-close at full speed (FIN,
  RST, or a few bytes then FIN), a ping flood on a few upgraded connections (ping control
  frames and JSON pings), and subscribe queries and unsubscribe bodies listing 10,000
  channel names;
- `after`: quiet again, to see hubd recover.

It reports, per phase (an event belongs to the phase it was published in), the legitimate
subscribers' delivery latency (p50/p99/max), lost events (every accepted event must reach
every legitimate subscriber), publish errors, and the daemon's RSS, open descriptors and
CLOSE_WAIT sockets; then what the attackers saw (how long hubd let slowloris connections
live, how often it cut the flood, how fast it answered the channel lists). Exits 1 if an
event was lost, a publish failed, a legitimate subscriber was disconnected or hubd died.

    python -m bench.abuse --quick          # 10 s phases (the default is 30 s)
    python -m bench.abuse --phase-seconds 60 --slowloris 2000
    python -m bench abuse --quick          # the same, through `python -m bench`
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.daemon import terminate, wait_ready
from bench.loadgen import SEQ, Client, http_request, percentiles, rss_kb

ROOT = Path(__file__).resolve().parent.parent
HUBD = Path(sys.executable).with_name("hubd")
PHASES = ("before", "during", "after")

LEGIT_SUB, LEGIT_PUB, HOSTILE = "legit-sub", "legit-pub", "hostile"
CONFIG = f"""
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = 3.0
[limits]
max_connections = 20000
[log]
level = "info"
[[auth.tokens]]
name = "{LEGIT_SUB}"
token = "{LEGIT_SUB}"
roles = ["subscriber"]
[[auth.tokens]]
name = "{LEGIT_PUB}"
token = "{LEGIT_PUB}"
roles = ["publisher"]
[[auth.tokens]]
name = "{HOSTILE}"
token = "{HOSTILE}"
roles = ["subscriber"]
"""

SUB_PATH = "/v1/ws/subscribe?event_types=pdfm,health"
CHANNEL_NAMES = [f"u{i:x}" for i in range(10000)]  # distinct, valid-looking, unknown


def address(net: int, i: int) -> str:
    """The i-th loopback address of 127.<net>.0.0/16, skipping .0 and .255."""
    return f"127.{net}.{(i // 250) % 256}.{i % 250 + 1}"


def raise_nofile() -> int:
    """Raise this process' open-file limit to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def close_wait(port: int) -> int:
    """Sockets on `port` in CLOSE_WAIT: the peer has closed, the daemon has not."""
    needle = f":{port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1].endswith(needle) and fields[3] == "08":
                count += 1
    return count


def masked(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (payloads < 126 bytes)."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + body


# -- the daemon ----------------------------------------------------------------------------


class Daemon:
    """`hubd serve` on a free loopback port, its log in a temporary file."""

    def __init__(self, nofile: int) -> None:
        fd, self.config = tempfile.mkstemp(suffix=".toml", prefix="hubd-abuse-")
        with os.fdopen(fd, "w") as f:
            f.write(CONFIG)
        self.log = self.config.replace(".toml", ".log")

        def limit() -> None:  # what the systemd unit gives it (LimitNOFILE), within ours
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            want = nofile if hard == resource.RLIM_INFINITY else min(nofile, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(HUBD), "serve", "-c", self.config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=ROOT,
                preexec_fn=limit,
            )
        self.port = wait_ready(self.proc, self.log, 20)
        if not self.port:
            self.stop()
            raise SystemExit(f"hubd did not start; see {self.log}")

    def log_counts(self) -> dict[str, int]:
        text = Path(self.log).read_text(errors="replace")
        return {
            "tracebacks": text.count("Traceback"),
            "error_lines": sum(" ERROR " in line for line in text.splitlines()),
            "log_bytes": len(text),
        }

    def stop(self, keep_log: bool = False) -> int | None:
        code = self.proc.poll()
        terminate(self.proc, 10)
        os.unlink(self.config)
        if not keep_log:
            os.unlink(self.log)
        return code


# -- legitimate clients --------------------------------------------------------------------


@dataclass
class Legit:
    index: int
    seen: set[int] = field(default_factory=set)
    connected: bool = False
    closed: str | None = None  # why it ended, if it did before the run
    pongs: int = 0


@dataclass
class Run:
    """Everything the legitimate side measures, shared by its tasks."""

    port: int
    pid: int
    tag: str = field(default_factory=lambda: os.urandom(4).hex())
    phase: str = "setup"
    phase_of: list[str] = field(default_factory=list)  # by seq: when it was published
    accepted: list[bool] = field(default_factory=list)  # by seq: 202
    publish_errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    publish_ms: dict[str, list[float]] = field(default_factory=dict)  # POST round trips
    phase_span: dict[str, list[float]] = field(default_factory=dict)  # [start, end]
    samples: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    died: str | None = None
    died_in: str | None = None
    setup_error: str | None = None
    hostile: dict[str, Any] = field(default_factory=dict)
    subs: list[Legit] = field(default_factory=list)


async def legit_subscriber(
    run: Run, sub: Legit, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    client, _ = await Client.connect(
        "127.0.0.1", run.port, SUB_PATH, LEGIT_SUB, address(20, sub.index + 2)
    )
    sub.connected = True
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_pinging, client)
            try:
                await _read_events(run, sub, client)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                sub.closed = sub.closed or f"connection error {exc!r}"
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await client.stream.aclose()


async def _read_events(run: Run, sub: Legit, client: Client) -> None:
    while True:
        chunk = await client.stream.receive_some(262144)
        if not chunk:
            sub.closed = sub.closed or "hubd closed the connection"
            return
        client.buffer += chunk
        now = time.perf_counter_ns()
        for opcode, payload in client.frames():
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if payload else 1005
                sub.closed = f"close frame {code} {payload[2:80].decode(errors='replace')}"
            if opcode != 0x1:
                continue
            if b'"pong"' in payload:
                sub.pongs += 1
            for seq_b, sent_b, tag_b in SEQ.findall(payload):
                if tag_b.decode() != run.tag:
                    continue
                seq = int(seq_b)
                sub.seen.add(seq)
                phase = run.phase_of[seq] if seq < len(run.phase_of) else "?"
                run.latencies_ms.setdefault(phase, []).append((now - int(sent_b)) / 1e6)


async def _keep_pinging(client: Client) -> None:
    """A JSON ping every 5 s, as a live client would (the idle deadline)."""
    n = 0
    while True:
        await trio.sleep(5)
        n += 1
        ping = {"event_type": "health", "message": "ping", "id": f"legit-{n}"}
        try:
            await client.send_text(json.dumps(ping))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the reader finds out why


async def publisher(run: Run, rate: float, k: int, of: int) -> None:
    """Publisher k of `of`, together `rate` single-event POSTs per second on keep-alive
    connections (one each, so that one slow answer does not hold the rate back); each
    event is stamped with its seq, its send time and the run tag."""
    interval = of / rate
    stream: trio.SocketStream | None = None
    next_at = trio.current_time() + k / rate
    await trio.sleep_until(next_at)
    try:
        while True:
            seq = len(run.phase_of)
            run.phase_of.append(run.phase)
            run.accepted.append(False)
            body = {"seq": seq, "sent_ns": time.perf_counter_ns(), "run": run.tag, "pad": "x" * 80}
            payload = json.dumps(
                {"event_type": "pdfm", "message": "ABUSE", "body": body}, separators=(",", ":")
            ).encode()
            try:
                if stream is None:
                    sock = trio.socket.socket()
                    await sock.bind((address(20, 0), 0))
                    await sock.connect(("127.0.0.1", run.port))
                    stream = trio.SocketStream(sock)
                started = trio.current_time()
                with trio.fail_after(5):
                    status, _ = await http_request(stream, "POST", "/v1/events", LEGIT_PUB, payload)
                run.publish_ms.setdefault(run.phase, []).append(
                    (trio.current_time() - started) * 1000
                )
                if status == 202:
                    run.accepted[seq] = True
                else:
                    run.publish_errors[f"{run.phase}: status {status}"] += 1
            except (
                OSError,
                ConnectionError,
                ValueError,
                IndexError,
                trio.BrokenResourceError,
                trio.TooSlowError,
            ) as exc:
                run.publish_errors[f"{run.phase}: {type(exc).__name__}"] += 1
                if stream is not None:
                    await stream.aclose()
                stream = None
                await trio.sleep(0.1)
            next_at += interval
            now = trio.current_time()
            if next_at < now - 1.0:  # far behind: do not burst to catch up
                next_at = now
            await trio.sleep(max(0.0, next_at - now))
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def sampler(run: Run, proc: subprocess.Popen[bytes], stop_all: trio.CancelScope) -> None:
    """Twice a second: the daemon's RSS, descriptors and CLOSE_WAIT sockets; notices death."""
    while True:
        code = proc.poll()
        if code is not None:
            run.died, run.died_in = f"hubd exited with {code}", run.phase
            stop_all.cancel()
            return
        sample = (rss_kb(run.pid), fd_count(run.pid), close_wait(run.port))
        run.samples.setdefault(run.phase, []).append(sample)
        await trio.sleep(0.5)


async def hostile_process(run: Run, args: argparse.Namespace, seconds: float) -> None:
    cmd = [
        sys.executable,
        "-m",
        "bench.abuse",
        "--hostile",
        "--port",
        str(run.port),
        "--seconds",
        str(seconds),
        "--slowloris",
        str(args.slowloris),
        "--churn-workers",
        str(args.churn_workers),
        "--flood",
        str(args.flood),
        "--channel-workers",
        str(args.channel_workers),
    ]
    with trio.move_on_after(seconds + 30):
        result = await trio.run_process(cmd, capture_stdout=True, check=False, cwd=ROOT)
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        try:
            run.hostile = json.loads(lines[-1])
        except (IndexError, ValueError):
            run.hostile = {"error": f"attacker exited {result.returncode}: {lines[-3:]}"}
        return
    run.hostile = {"error": "attacker did not stop in time (killed)"}


async def orchestrate(run: Run, proc: subprocess.Popen[bytes], args: argparse.Namespace) -> None:
    run.subs = [Legit(i) for i in range(args.subs)]
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(50)

        async def connect(sub: Legit) -> None:
            async with limiter:
                try:
                    await nursery.start(legit_subscriber, run, sub)
                except (OSError, ConnectionError) as exc:
                    sub.closed = f"could not connect: {exc}"

        async with trio.open_nursery() as connecting:
            for sub in run.subs:
                connecting.start_soon(connect, sub)
        if not all(s.connected for s in run.subs):
            run.setup_error = (
                "not every legitimate subscriber could connect: "
                + "; ".join(s.closed or "?" for s in run.subs if not s.connected)[:500]
            )
            nursery.cancel_scope.cancel()
            return
        nursery.start_soon(sampler, run, proc, nursery.cancel_scope)
        for k in range(args.publishers):
            nursery.start_soon(publisher, run, args.rate, k, args.publishers)
        for phase in PHASES:
            run.phase = phase
            run.phase_span[phase] = [trio.current_time()] * 2
            if phase == "during":  # until the attackers' process has stopped
                await hostile_process(run, args, args.phase_seconds)
            else:
                await trio.sleep(args.phase_seconds)
            run.phase_span[phase][1] = trio.current_time()
        run.phase = "drain"
        # Stop publishing, then give the last events time to arrive.
        with trio.move_on_after(5):
            while True:
                expected = {i for i, ok in enumerate(run.accepted) if ok}
                if all(expected <= s.seen for s in run.subs if not s.closed):
                    break
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


# -- hostile clients (a process of their own) ----------------------------------------------


@dataclass
class Attack:
    port: int
    deadline: float
    slowloris_opened: int = 0
    slowloris_held: int = 0
    slowloris_peak: int = 0
    slowloris_cut_after: list[float] = field(default_factory=list)
    slowloris_answers: Counter[str] = field(default_factory=Counter)
    connect_failed: int = 0
    churned: int = 0
    churn_failed: int = 0
    flood_frames: int = 0
    flood_connections: int = 0
    flood_closes: Counter[str] = field(default_factory=Counter)
    channel_answers: Counter[str] = field(default_factory=Counter)
    channel_ms: list[float] = field(default_factory=list)
    unsubscribe_answers: Counter[str] = field(default_factory=Counter)
    unsubscribe_ms: list[float] = field(default_factory=list)


async def open_from(port: int, source: str, within: float = 3.0) -> trio.SocketStream:
    sock = trio.socket.socket()
    try:
        with trio.fail_after(within):
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def set_rst(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))


async def slowloris(attack: Attack, i: int, limiter: trio.CapacityLimiter) -> None:
    """Send a request line and a header byte every second, never the blank line; when hubd
    cuts the connection, note after how long, and open another."""
    n = 0
    while trio.current_time() < attack.deadline:
        source = address(10, i + 1000 * n)
        n += 1
        try:
            async with limiter:
                stream = await open_from(attack.port, source)
        except (OSError, trio.TooSlowError):
            attack.connect_failed += 1
            await trio.sleep(1)
            continue
        attack.slowloris_opened += 1
        attack.slowloris_held += 1
        attack.slowloris_peak = max(attack.slowloris_peak, attack.slowloris_held)
        opened = trio.current_time()
        answer = b""
        try:
            await stream.send_all(
                b"GET /v1/ws/subscribe?event_types=pdfm HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            )
            dribble = b"X-Slow: " + b"a" * 40 + b"\r\n"
            k = 0
            while trio.current_time() < attack.deadline:
                with trio.move_on_after(1.0):  # the pause between bytes, and a look for EOF
                    chunk = await stream.receive_some(4096)
                    answer += chunk
                    if not chunk:
                        break
                    continue
                await stream.send_all(dribble[k % len(dribble) : k % len(dribble) + 1])
                k += 1
            else:
                continue  # held to the end of the attack
            attack.slowloris_cut_after.append(trio.current_time() - opened)
            status = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
            attack.slowloris_answers[status[1].decode() if status else "closed"] += 1
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            attack.slowloris_cut_after.append(trio.current_time() - opened)
            attack.slowloris_answers["reset"] += 1
        finally:
            attack.slowloris_held -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()


async def churn(attack: Attack, worker: int) -> None:
    """Connect and close at once, as fast as possible: FIN, RST, or a few bytes then FIN."""
    n = 0
    while trio.current_time() < attack.deadline:
        n += 1
        source = address(11, worker * 62500 // 8 + n)
        try:
            stream = await open_from(attack.port, source, within=2.0)
        except (OSError, trio.TooSlowError):
            attack.churn_failed += 1
            await trio.sleep(0.01)
            continue
        attack.churned += 1
        try:
            if n % 3 == 1:
                set_rst(stream)
            elif n % 3 == 2:
                await stream.send_all(b"GET /v1/he")
        except (OSError, trio.BrokenResourceError):
            pass
        await stream.aclose()


async def ping_flood(attack: Attack, worker: int) -> None:
    """Upgrade, then send ping control frames and JSON pings as fast as hubd takes them;
    when it closes the connection, open another."""
    n = 0
    while trio.current_time() < attack.deadline:
        n += 1
        try:
            client, _ = await Client.connect(
                "127.0.0.1", attack.port, SUB_PATH, HOSTILE, address(12, worker * 1000 + n)
            )
        except (OSError, ConnectionError) as exc:
            attack.flood_closes[f"refused: {str(exc)[:40]}"] += 1
            await trio.sleep(0.2)
            continue
        attack.flood_connections += 1
        try:
            attack.flood_closes[await _flood(attack, client)] += 1
        finally:
            with trio.CancelScope(shield=True):
                await client.stream.aclose()


FLOOD = (
    masked(0x9, b"flood") + masked(0x1, b'{"event_type":"health","message":"ping","id":"f"}')
) * 50


async def _flood(attack: Attack, client: Client) -> str:
    """Flood one connection until the deadline or hubd ends it; say how it ended."""
    ended: list[str] = []

    async def read(cancel: trio.CancelScope) -> None:
        try:
            while chunk := await client.stream.receive_some(262144):
                client.buffer += chunk
                for opcode, payload in client.frames():
                    if opcode == 0x8:
                        ended.append(f"close {int.from_bytes(payload[:2], 'big') or 1005}")
            ended.append("EOF")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            ended.append("reset")
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, nursery.cancel_scope)
        with trio.move_on_at(attack.deadline):
            try:
                while True:
                    await client.stream.send_all(FLOOD)
                    attack.flood_frames += 100
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.sleep(1)  # for the reader to see the close frame, if any
        nursery.cancel_scope.cancel()
    return ended[0] if ended else "attack over"


async def channel_subscribe(attack: Attack, worker: int) -> None:
    """Subscribe queries naming 10,000 (unknown) channels, over and over."""
    request = (
        f"GET /v1/ws/subscribe?event_types={','.join(CHANNEL_NAMES)} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {HOSTILE}\r\n\r\n"
    ).encode()
    n = 0
    while trio.current_time() < attack.deadline:
        n += 1
        start = trio.current_time()
        try:
            stream = await open_from(attack.port, address(13, worker * 20000 + n))
            try:
                with trio.fail_after(10):
                    await stream.send_all(request)
                    head = b""
                    while b"\r\n" not in head:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        head += chunk
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            status = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            attack.channel_answers[status[1].decode() if status else "closed"] += 1
            attack.channel_ms.append((trio.current_time() - start) * 1000)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            attack.channel_answers[type(exc).__name__] += 1


async def channel_unsubscribe(attack: Attack, worker: int) -> None:
    """Unsubscribe bodies naming 10,000 (unknown) channels, over and over, for a connection
    of its own (held open meanwhile)."""
    client_id = str(uuid.uuid4())  # unless the subscription below works
    holder: Client | None = None
    http: trio.SocketStream | None = None
    try:
        try:
            holder, _ = await Client.connect(
                "127.0.0.1", attack.port, SUB_PATH, HOSTILE, address(13, 60000 + worker)
            )
            with trio.move_on_after(3):
                while not has_frame(holder.buffer):
                    chunk = await holder.stream.receive_some(65536)
                    if not chunk:
                        break
                    holder.buffer += chunk
            for opcode, payload in holder.frames():
                if opcode == 0x1 and b"client_id" in payload:
                    client_id = json.loads(payload)["body"]["client_id"]
        except (OSError, ConnectionError, ValueError, KeyError):
            pass
        body = json.dumps({"client_id": client_id, "event_types": CHANNEL_NAMES}).encode()
        while trio.current_time() < attack.deadline:
            start = trio.current_time()
            try:
                if http is None:
                    http = await open_from(attack.port, address(13, 40000 + worker))
                with trio.fail_after(10):
                    code, _ = await http_request(http, "POST", "/v1/ws/unsubscribe", HOSTILE, body)
                attack.unsubscribe_answers[str(code)] += 1
                attack.unsubscribe_ms.append((trio.current_time() - start) * 1000)
            except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                attack.unsubscribe_answers[type(exc).__name__] += 1
                if http is not None:
                    await http.aclose()
                http = None
                await trio.sleep(0.1)
    finally:
        with trio.CancelScope(shield=True):
            if http is not None:
                await http.aclose()
            if holder is not None:
                await holder.stream.aclose()


def has_frame(buf: bytearray) -> bool:
    """Whether `buf` holds at least one complete frame (without consuming it)."""
    if len(buf) < 2:
        return False
    n, head = buf[1] & 0x7F, 2
    if n == 126:
        n, head = (int.from_bytes(buf[2:4], "big") if len(buf) >= 4 else 1 << 62), 4
    elif n == 127:
        n, head = (int.from_bytes(buf[2:10], "big") if len(buf) >= 10 else 1 << 62), 10
    return len(buf) >= head + n


async def attack_main(args: argparse.Namespace) -> dict[str, Any]:
    attack = Attack(args.port, trio.current_time() + args.seconds)
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(100)  # handshakes in flight while the slowloris ramp up
        for i in range(args.slowloris):
            nursery.start_soon(slowloris, attack, i, limiter)
        for w in range(args.churn_workers):
            nursery.start_soon(churn, attack, w)
        for w in range(args.flood):
            nursery.start_soon(ping_flood, attack, w)
        for w in range(args.channel_workers):
            nursery.start_soon(channel_subscribe, attack, w)
            nursery.start_soon(channel_unsubscribe, attack, w)
        # Everything stops by itself at the deadline; what is still in a call then is cut.
        nursery.cancel_scope.deadline = attack.deadline + 2

    def med(values: list[float]) -> float | None:
        return round(statistics.median(values), 1) if values else None

    cut = attack.slowloris_cut_after
    return {
        "seconds": args.seconds,
        "slowloris": {
            "requested": args.slowloris,
            "opened": attack.slowloris_opened,
            "peak_held": attack.slowloris_peak,
            "cut_by_hubd": len(cut),
            "cut_after_s_median": med(cut),
            "cut_after_s_max": round(max(cut), 1) if cut else None,
            "answers": dict(attack.slowloris_answers),
            "connect_failed": attack.connect_failed,
        },
        "connect_close": {
            "workers": args.churn_workers,
            "connections": attack.churned,
            "per_s": round(attack.churned / args.seconds, 1),
            "failed": attack.churn_failed,
        },
        "ping_flood": {
            "workers": args.flood,
            "connections": attack.flood_connections,
            "frames_sent": attack.flood_frames,
            "ended": dict(attack.flood_closes),
        },
        "channel_lists": {
            "workers": args.channel_workers,
            "subscribe_answers": dict(attack.channel_answers),
            "subscribe_ms_median": med(attack.channel_ms),
            "unsubscribe_answers": dict(attack.unsubscribe_answers),
            "unsubscribe_ms_median": med(attack.unsubscribe_ms),
        },
    }


# -- report --------------------------------------------------------------------------------


def summarize(run: Run, args: argparse.Namespace, exit_code: int | None) -> dict[str, Any]:
    accepted = [i for i, ok in enumerate(run.accepted) if ok]
    phases: dict[str, Any] = {}
    for phase in PHASES:
        seqs = [i for i in accepted if run.phase_of[i] == phase]
        lost = sum(len(set(seqs) - s.seen) for s in run.subs)
        samples = run.samples.get(phase, [])
        lat = percentiles(run.latencies_ms.get(phase, []))
        post = percentiles(run.publish_ms.get(phase, []))
        start, end = run.phase_span.get(phase, [0.0, 0.0])
        phases[phase] = {
            "seconds": round(end - start, 1),
            "events": len(seqs),
            "events_per_s": round(len(seqs) / (end - start), 1) if end > start else None,
            "deliveries": sum(len(set(seqs) & s.seen) for s in run.subs),
            "lost": lost,
            "publish_errors": sum(
                n for k, n in run.publish_errors.items() if k.startswith(phase + ":")
            ),
            "p50_ms": lat["p50"],
            "p99_ms": lat["p99"],
            "max_ms": lat["max"],
            "publish_p50_ms": post["p50"],
            "publish_p99_ms": post["p99"],
            "rss_kb_end": samples[-1][0] if samples else None,
            "rss_kb_peak": max(s[0] for s in samples) if samples else None,
            "fds_end": samples[-1][1] if samples else None,
            "fds_peak": max(s[1] for s in samples) if samples else None,
            "close_wait_end": samples[-1][2] if samples else None,
            "close_wait_peak": max(s[2] for s in samples) if samples else None,
        }
    lost_total = sum(p["lost"] for p in phases.values())
    disconnected = {f"legit-{s.index}": s.closed for s in run.subs if s.closed}
    failures = []
    if run.setup_error:
        failures.append(run.setup_error)
    if run.died:
        failures.append(f"{run.died} during '{run.died_in}'")
    if lost_total:
        failures.append(f"{lost_total} deliveries lost")
    if run.publish_errors:
        failures.append(f"{sum(run.publish_errors.values())} publish errors")
    if disconnected:
        failures.append(f"{len(disconnected)} legitimate subscribers disconnected")
    return {
        "bench": "abuse",
        "phase_seconds": args.phase_seconds,
        "subscribers": args.subs,
        "rate": args.rate,
        "phases": phases,
        "lost": lost_total,
        "publish_errors": dict(run.publish_errors),
        "disconnected": disconnected,
        "hubd_exit": exit_code,
        "hostile": run.hostile,
        "failures": failures,
    }


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def _n(value: Any) -> str:
    return "-" if value is None else str(value)


def print_report(summary: dict[str, Any], log: dict[str, int], log_path: str | None) -> None:
    print(
        f"\nhubd under abuse: {summary['subscribers']} legitimate subscribers, "
        f"{summary['rate']:g} events/s asked, phases of {summary['phase_seconds']:g} s "
        "(an event counts in the phase it was published in)\n"
    )
    header = (
        f"{'phase':<7} {'secs':>5} {'events':>6} {'ev/s':>6} | {'delivery ms p50':>15} "
        f"{'p99':>8} {'max':>8} | {'POST ms p50':>11} {'p99':>8} | {'lost':>5} {'pub err':>7} "
        f"| {'RSS MB end/peak':>15} {'fds end/peak':>13} {'CLOSE_WAIT end/peak':>19}"
    )
    print(header)
    print("-" * len(header))
    for name, p in summary["phases"].items():
        print(
            f"{name:<7} {p['seconds']:>5} {p['events']:>6} {_n(p['events_per_s']):>6} | "
            f"{_n(p['p50_ms']):>15} {_n(p['p99_ms']):>8} {_n(p['max_ms']):>8} | "
            f"{_n(p['publish_p50_ms']):>11} {_n(p['publish_p99_ms']):>8} | "
            f"{p['lost']:>5} {p['publish_errors']:>7} | "
            f"{_mb(p['rss_kb_end']) + '/' + _mb(p['rss_kb_peak']):>15} "
            f"{_n(p['fds_end']) + '/' + _n(p['fds_peak']):>13} "
            f"{_n(p['close_wait_end']) + '/' + _n(p['close_wait_peak']):>19}"
        )
    h = summary["hostile"]
    print("\nattackers (during):")
    if "error" in h:
        print(f"  {h['error']}")
    else:
        s, c, f, ch = h["slowloris"], h["connect_close"], h["ping_flood"], h["channel_lists"]
        print(
            f"  slowloris        {s['opened']} opened (asked {s['requested']}), peak "
            f"{s['peak_held']} held at once; hubd cut {s['cut_by_hubd']} "
            f"(median after {_n(s['cut_after_s_median'])} s, max {_n(s['cut_after_s_max'])} s; "
            f"answers {s['answers']}); {s['connect_failed']} connects failed"
        )
        print(
            f"  connect+close    {c['connections']} connections ({c['per_s']}/s, "
            f"{c['workers']} workers), {c['failed']} failed"
        )
        print(
            f"  ping flood       {f['frames_sent']} frames on {f['connections']} connection(s) "
            f"({f['workers']} at a time); how they ended: {f['ended']}"
        )
        print(
            f"  channel lists    subscribe with 10,000 names: {ch['subscribe_answers']} "
            f"(median {_n(ch['subscribe_ms_median'])} ms); unsubscribe with 10,000 names: "
            f"{ch['unsubscribe_answers']} (median {_n(ch['unsubscribe_ms_median'])} ms)"
        )
    print(
        f"\nhubd log: {log['tracebacks']} traceback(s), {log['error_lines']} ERROR line(s), "
        f"{log['log_bytes'] // 1024} KiB" + (f" (kept: {log_path})" if log_path else "")
    )
    if summary["disconnected"]:
        shown = list(summary["disconnected"].items())[:5]
        print(f"legitimate subscribers disconnected: {len(summary['disconnected'])}, e.g. {shown}")
    if summary["failures"]:
        print("\nFAIL: " + "; ".join(summary["failures"]))
    else:
        print("\nOK: no loss, no publish error, every legitimate subscriber stayed, hubd alive")


# -- entry point ---------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.abuse", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="10 s phases (default 30 s)")
    parser.add_argument("--phase-seconds", type=float, help="length of each of the 3 phases")
    parser.add_argument("--subs", type=int, default=50, help="legitimate subscribers (50)")
    parser.add_argument("--rate", type=float, default=100.0, help="events published per second")
    parser.add_argument(
        "--publishers", type=int, default=8, help="concurrent publishing connections (8)"
    )
    parser.add_argument("--slowloris", type=int, default=1000, help="slowloris connections")
    parser.add_argument("--churn-workers", type=int, default=4, help="connect-and-close loops")
    parser.add_argument("--flood", type=int, default=4, help="ping-flood connections")
    parser.add_argument(
        "--channel-workers", type=int, default=2, help="loops of each 10k-channel-list request"
    )
    parser.add_argument(
        "--daemon-nofile",
        type=int,
        default=65536,
        help="hubd's open-file limit (the systemd unit's LimitNOFILE; capped by the hard limit)",
    )
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.add_argument("--hostile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase_seconds is None:
        args.phase_seconds = 10.0 if args.quick else 30.0
    if not 1 <= args.subs <= 60000 or args.rate <= 0 or args.phase_seconds <= 0:
        parser.error("need 1-60000 subscribers, a positive rate and a positive phase length")
    if args.publishers < 1:
        parser.error("need at least one publisher")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    raise_nofile()
    if args.hostile:  # the attackers' own process, started by the main one
        print(json.dumps(trio.run(attack_main, args)), flush=True)
        return 0
    daemon = Daemon(args.daemon_nofile)
    run = Run(port=daemon.port, pid=daemon.proc.pid)
    print(
        f"hubd pid {daemon.proc.pid} on 127.0.0.1:{daemon.port}; "
        f"3 phases of {args.phase_seconds:g} s ...",
        flush=True,
    )
    try:
        trio.run(orchestrate, run, daemon.proc, args)
    finally:
        log = daemon.log_counts()
        exit_code = daemon.proc.poll()
        summary = summarize(run, args, exit_code)
        keep = bool(summary["failures"] or log["tracebacks"])
        daemon.stop(keep_log=keep)
    print_report(summary, log, daemon.log if keep else None)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
