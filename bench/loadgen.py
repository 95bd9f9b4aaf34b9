"""hubd's own load generator: subscribers and publisher in one trio process, so latency is
measured on one clock (the publisher stamps `sent_ns`; each subscriber reads it back).

Each subscriber binds its own 127.0.x.y source address (the server allows one connection
per client IP). The WebSocket client is deliberately minimal — a raw handshake and an
unmasked-frame parser that only looks for `"seq"` and `"sent_ns"` — so that the generator
can absorb more deliveries than a full client library would; it still decodes every
64th event completely and counts frames it cannot parse.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import trio

SEQ = re.compile(rb'"seq":(\d+),"sent_ns":(\d+),"run":"([0-9a-f]+)"')


def source_address(i: int) -> str:
    """The i-th subscriber's loopback source address: 127.0.x.y, skipping .0 and .255."""
    n = i + 2
    return f"127.0.{n // 254}.{n % 254 + 1}" if n >= 254 else f"127.0.0.{n}"


@dataclass
class Subscriber:
    index: int
    received: int = 0
    last_seq: int = -1
    gaps: int = 0
    reordered: int = 0
    duplicates: int = 0
    other_frames: int = 0
    bad_frames: int = 0
    latencies_us: list[float] = field(default_factory=list)
    connected: bool = False
    closed_code: int | None = None


class Client:
    """A minimal WebSocket client over one trio socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(
        cls, host: str, port: int, path: str, token: str, source: str
    ) -> tuple[Client, bytes]:
        sock = trio.socket.socket()
        await sock.bind((source, 0))
        await sock.connect((host, port))
        client = cls(trio.SocketStream(sock))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        await client.stream.send_all(request.encode())
        while b"\r\n\r\n" not in client.buffer:
            chunk = await client.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed during handshake")
            client.buffer += chunk
        head, _, rest = bytes(client.buffer).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        client.buffer = bytearray(rest)
        return client, head

    def frames(self) -> list[tuple[int, bytes]]:
        """Complete frames in the buffer as (opcode, payload); leaves partial ones."""
        out: list[tuple[int, bytes]] = []
        buf = self.buffer
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            opcode = buf[pos] & 0x0F
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if end - pos < head + n:
                break
            out.append((opcode, bytes(buf[pos + head : pos + head + n])))
            pos += head + n
        del buf[:pos]
        return out

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
        await self.stream.send_all(header + mask + masked)


async def http_request(
    stream: trio.SocketStream, method: str, path: str, token: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive request; returns (status, body)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    await stream.send_all(head.encode() + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the publish connection")
        buf += chunk
    header, _, rest = buf.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = 0
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("short response")
        rest += chunk
    return status, rest[:length]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    values = sorted(values)

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": at(1.0)}


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Target:
    host: str
    port: int
    token: str
    pid: int | None
    batch: bool = False
    # Ports subscribers are spread over, round robin (default: `port`). The publisher
    # always posts to `port`: with several nodes, events cross the backplane.
    sub_ports: tuple[int, ...] = ()

    def sub_port(self, index: int) -> int:
        return self.sub_ports[index % len(self.sub_ports)] if self.sub_ports else self.port

    @property
    def path(self) -> str:
        return "/v1/ws/subscribe?event_types=pdfm" + ("&batch=1" if self.batch else "")


async def _subscriber(
    target: Target,
    sub: Subscriber,
    run: str,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect (failures raise to the starter), then read until closed or cancelled."""
    client, _ = await Client.connect(
        target.host,
        target.sub_port(sub.index),
        target.path,
        target.token,
        source_address(sub.index),
    )
    sub.connected = True
    task_status.started()
    parse_every = 64
    try:
        while True:
            chunk = await client.stream.receive_some(262144)
            if not chunk:
                return
            client.buffer += chunk
            now = time.perf_counter_ns()
            for opcode, payload in client.frames():
                if opcode == 0x8:
                    sub.closed_code = int.from_bytes(payload[:2], "big") if payload else 1005
                    return
                if opcode != 0x1:
                    continue
                found = SEQ.findall(payload)
                if not found:
                    sub.other_frames += 1
                    continue
                for seq_b, sent_b, run_b in found:
                    if run_b.decode() != run:
                        continue
                    seq = int(seq_b)
                    if seq == sub.last_seq + 1:
                        pass
                    elif seq <= sub.last_seq:
                        sub.duplicates += 1
                    else:
                        sub.gaps += 1
                    sub.last_seq = max(sub.last_seq, seq)
                    sub.received += 1
                    if sub.received % 16 == 0 or len(sub.latencies_us) < 2000:
                        sub.latencies_us.append((now - int(sent_b)) / 1000)
                    if sub.received % parse_every == 0:
                        try:
                            for line in payload.split(b"\n"):
                                json.loads(line)
                        except ValueError:
                            sub.bad_frames += 1
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        sub.closed_code = 1006
    finally:
        with trio.CancelScope(shield=True):
            await client.stream.aclose()


def _event(seq: int, run: str) -> dict[str, Any]:
    return {
        "event_type": "pdfm",
        "message": "BENCH",
        "body": {"seq": seq, "sent_ns": time.perf_counter_ns(), "run": run, "pad": "x" * 120},
    }


def _payload(events: list[dict[str, Any]]) -> bytes:
    # The harness' body layout: seq, sent_ns and run adjacent, as SEQ expects.
    return json.dumps(events, separators=(",", ":")).encode()


async def run_scenario(target: Target, scenario: str, **opts: Any) -> dict[str, Any]:
    """Run one scenario against a running hub and return its summary."""
    run = os.urandom(4).hex()
    subs = [Subscriber(i) for i in range(opts["subs"])]
    result: dict[str, Any] = {"scenario": scenario, "subs": opts["subs"], "batch": target.batch}
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        limiter = trio.CapacityLimiter(opts.get("connect_concurrency", 100))

        async def connect_one(sub: Subscriber) -> None:
            async with limiter:
                with contextlib.suppress(OSError, ConnectionError):
                    await nursery.start(_subscriber, target, sub, run)

        async with trio.open_nursery() as connecting:
            for sub in subs:
                connecting.start_soon(connect_one, sub)
        connect_s = time.perf_counter() - t0
        connected = sum(s.connected for s in subs)
        result["connections"] = {
            "requested": len(subs),
            "achieved": connected,
            "seconds": round(connect_s, 3),
            "rate_per_s": round(connected / connect_s, 1) if connect_s else None,
        }
        if scenario == "idle" and target.pid is not None:
            base = opts["rss_before_kb"]
            await trio.sleep(opts.get("hold", 5))
            after = rss_kb(target.pid)
            result["idle"] = {
                "rss_before_kb": base,
                "rss_after_kb": after,
                "kb_per_conn": round((after - base) / max(1, connected), 2),
                "survivors": sum(s.connected and s.closed_code is None for s in subs),
            }
        expected = 0
        if scenario in ("light", "fanout", "cluster"):
            stream = await trio.open_tcp_stream(target.host, target.port)
            seq = 0
            start = time.perf_counter()
            deadline = start + opts["duration"]
            if scenario == "light":
                interval = 1.0 / opts["rate"]
                next_at = start
                while time.perf_counter() < deadline:
                    status, _ = await http_request(
                        stream, "POST", "/v1/events", target.token, _payload([_event(seq, run)])
                    )
                    if status == 202:
                        seq += 1
                    next_at += interval
                    await trio.sleep(max(0.0, next_at - time.perf_counter()))
            else:
                window = opts.get("window", 2000)
                while time.perf_counter() < deadline:
                    slowest = min((s.received for s in subs if s.connected), default=seq)
                    if seq - slowest >= window:
                        await trio.sleep(0.001)  # wait for the slowest subscriber
                        continue
                    events = [_event(seq + k, run) for k in range(opts.get("batch", 50))]
                    status, _ = await http_request(
                        stream, "POST", "/v1/events", target.token, _payload(events)
                    )
                    if status == 202:
                        seq += len(events)
            publish_s = time.perf_counter() - start
            expected = seq
            with trio.move_on_after(opts.get("drain", 10)):
                # Polling is fine here: it is the generator's own bookkeeping, off the hot path.
                while any(s.received < expected for s in subs if s.connected):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            elapsed = time.perf_counter() - start
            received = sum(s.received for s in subs)
            total = expected * connected
            latencies = [v / 1000 for s in subs for v in s.latencies_us]
            result["publish"] = {"events": expected, "seconds": round(publish_s, 3)}
            result["delivery"] = {
                "expected": total,
                "received": received,
                "lost": total - received,
                "loss_pct": round(100 * (total - received) / total, 4) if total else 0,
                "gaps": sum(s.gaps for s in subs),
                "duplicates": sum(s.duplicates for s in subs),
                "bad_frames": sum(s.bad_frames for s in subs),
                "deliveries_per_s": round(received / elapsed, 1) if elapsed else None,
            }
            result["latency_ms"] = percentiles(latencies)
            status, body = await http_request(stream, "GET", "/v1/ws/stats", target.token)
            if status == 200:
                hist = json.loads(body)["delivery_latency"]
                result["hub_latency_le_ms"] = {
                    k.split("_")[0]: (None if hist[k] is None else round(hist[k] * 1000, 3))
                    for k in ("p50_le_seconds", "p90_le_seconds", "p99_le_seconds")
                }
            await stream.aclose()
        nursery.cancel_scope.cancel()
    return result


def median_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the headline figures of several runs."""

    def med(path: tuple[str, str]) -> float | None:
        values = [r.get(path[0], {}).get(path[1]) for r in results]
        nums = [v for v in values if isinstance(v, (int, float))]
        return round(statistics.median(nums), 3) if nums else None

    return {
        "runs": len(results),
        "deliveries_per_s": med(("delivery", "deliveries_per_s")),
        "loss_pct": med(("delivery", "loss_pct")),
        "p50_ms": med(("latency_ms", "p50")),
        "p99_ms": med(("latency_ms", "p99")),
        "hub_p99_le_ms": med(("hub_latency_le_ms", "p99")),
        "conn_per_s": med(("connections", "rate_per_s")),
        "kb_per_conn": med(("idle", "kb_per_conn")),
    }
