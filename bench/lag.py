"""`python -m bench.lag`: the memory of a cluster node that cannot keep up (bench/README.md).

    python -m bench.lag                          # this tree's hubd, 40 s of flood
    python -m bench.lag --tree /path/to/other    # another checkout's hubd (before/after)

Starts a throwaway redis-server and two `hubd serve` nodes sharing it: A takes the
publishes, B holds --subs subscriber connections on one channel (each from its own
127.0.x.y address, reading --read-bytes every --read-every seconds). A is flooded with
batches of --batch events of about --size bytes at --rate events/s, so B's fan-out (every
event to every connection) falls behind what the cluster publishes. B's RSS
(/proc/<pid>/status VmRSS) is sampled every second and printed as a curve; then its peak,
the lag cutoffs it logged and the notices its subscribers were sent. Everything is on
loopback, bounded in count and time (the flood stops early if B's RSS passes --rss-cap-mb)
and stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.daemon import terminate, wait_ready
from bench.loadgen import Client, http_request, rss_kb, source_address
from bench.redis_process import RedisProcess

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench"
CHANNEL = "pdfm"
GAP = b"backplane_gap"
DROPPED = b'"events_dropped"'

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = 3.0
[hub]
idle_timeout = 600.0
[limits]
max_connections = 20000
[log]
level = "info"
[[auth.tokens]]
name = "bench"
token = "bench"
roles = ["admin"]
[backplane]
kind = "redis"
url = "redis://127.0.0.1:{port}/0"
prefix = "lag{pid}"
"""


class Node:
    """A `hubd serve` of the source tree `tree`, run from that tree (so that it imports
    that tree's hubd, not whichever one is installed)."""

    def __init__(self, tree: Path, config: str, directory: str, name: str) -> None:
        self.config = os.path.join(directory, f"{name}.toml")
        self.log = os.path.join(directory, f"{name}.log")
        with open(self.config, "w") as f:
            f.write(config)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubd", "serve", "--config", self.config],
                stderr=log,
                cwd=tree,
                env=env,
            )
        self.port = wait_ready(self.proc, self.log, 30)
        if not self.port:
            self.stop()
            raise RuntimeError(f"hubd did not start:\n{self.output()[-2000:]}")

    def output(self) -> str:
        with open(self.log, errors="replace") as log:
            return log.read()

    def stop(self) -> None:
        terminate(self.proc, 10)


@dataclass
class Counts:
    connected: int = 0
    bytes: int = 0
    dropped_notices: int = 0  # every events_dropped notice (the queue's own and gaps)
    gap_notices: int = 0  # those saying the backplane lost events (new field)
    closed: int = 0


async def subscriber(
    port: int,
    index: int,
    counts: Counts,
    read_bytes: int,
    read_every: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    client, _ = await Client.connect(
        "127.0.0.1",
        port,
        f"/v1/ws/subscribe?event_types={CHANNEL}",
        TOKEN,
        source_address(index),
    )
    counts.connected += 1
    task_status.started()
    tail = b""
    keep = max(len(GAP), len(DROPPED)) - 1
    try:
        while True:
            chunk = await client.stream.receive_some(read_bytes)
            if not chunk:
                break
            counts.bytes += len(chunk)
            # What a notice split across two reads still counts once: the tail is
            # shorter than either pattern, so nothing in it alone was counted before.
            data = tail + chunk
            counts.dropped_notices += data.count(DROPPED)
            counts.gap_notices += data.count(GAP)
            tail = data[-keep:]
            if read_every:
                await trio.sleep(read_every)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        counts.closed += 1
        with trio.CancelScope(shield=True):
            await client.stream.aclose()


async def publisher(
    port: int, rate: float, batch: int, size: int, until: float, sent: list[int]
) -> None:
    event = {"event_type": CHANNEL, "message": "LAG", "body": {"pad": "x" * size}}
    body = json.dumps([event] * batch, separators=(",", ":")).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    next_at = time.monotonic()
    try:
        while time.monotonic() < until:
            status, _ = await http_request(stream, "POST", "/v1/events", TOKEN, body)
            if status == 202:
                sent[0] += batch
            else:
                sent[1] += 1
            next_at += batch / rate
            await trio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        await stream.aclose()


async def flood(args: argparse.Namespace, a: Node, b: Node) -> dict[str, Any]:
    counts = Counts()
    sent = [0, 0]  # events accepted, requests refused
    curve: list[tuple[float, float]] = []
    capped = False
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(100)

        async def connect(index: int) -> None:
            async with limiter:
                with contextlib.suppress(OSError, ConnectionError):
                    await nursery.start(
                        subscriber, b.port, index, counts, args.read_bytes, args.read_every
                    )

        async with trio.open_nursery() as connecting:
            for index in range(args.subs):
                connecting.start_soon(connect, index)
        begun = time.monotonic()
        until = begun + args.seconds
        for _ in range(args.publishers):
            nursery.start_soon(
                publisher, a.port, args.rate / args.publishers, args.batch, args.size, until, sent
            )
        while time.monotonic() < until:
            await trio.sleep(1.0)
            rss = rss_kb(b.proc.pid) / 1024
            curve.append((round(time.monotonic() - begun, 1), round(rss, 1)))
            print(f"  t={curve[-1][0]:5.1f}s  B rss={rss:8.1f} MB", flush=True)
            if rss > args.rss_cap_mb:
                capped = True
                break
        nursery.cancel_scope.cancel()
    metrics = await scrape(b.port)
    return {
        "counts": counts,
        "sent": sent,
        "curve": curve,
        "capped": capped,
        "metrics": metrics,
        "seconds": round(time.monotonic() - begun, 1),
    }


async def scrape(port: int) -> dict[str, float]:
    """The lag figures from B's /metrics (a node without them reports none)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        status, body = await http_request(stream, "GET", "/metrics", TOKEN)
    finally:
        await stream.aclose()
    found: dict[str, float] = {}
    if status != 200:
        return found
    for line in body.decode().splitlines():
        if line.startswith(("hubd_backplane_lag", "hubd_missed_notices_total")):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lag", description=__doc__)
    parser.add_argument("--tree", type=Path, default=ROOT, help="hubd source tree to run")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the flood")
    parser.add_argument("--subs", type=int, default=1500, help="connections on node B")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s published to A")
    parser.add_argument("--batch", type=int, default=250, help="events per publish request")
    parser.add_argument("--size", type=int, default=1000, help="bytes of padding per event")
    parser.add_argument("--publishers", type=int, default=2, help="publishing connections")
    parser.add_argument("--read-bytes", type=int, default=65536, help="bytes per read")
    parser.add_argument("--read-every", type=float, default=0.0, help="pause between reads")
    parser.add_argument("--max-lag", type=int, default=None, help="backplane.max_lag for B")
    parser.add_argument("--rss-cap-mb", type=float, default=3000.0, help="stop the flood here")
    args = parser.parse_args(argv)
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be within 1..1000 (events one request may hold)")
    if not 0 < args.seconds <= 300:
        parser.error("--seconds must be within (0, 300]")
    _raise_nofile()
    tree = args.tree.resolve()
    which = subprocess.run(
        [sys.executable, "-c", "import hubd; print(hubd.__file__)"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"hubd from {which}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hubd-lag-") as directory:
        redis = RedisProcess("bench.lag", directory)
        nodes: list[Node] = []
        try:
            config = CONFIG.format(port=redis.port, pid=os.getpid())
            nodes.append(Node(tree, config, directory, "a"))
            extra = f"max_lag = {args.max_lag}\n" if args.max_lag is not None else ""
            nodes.append(Node(tree, config + extra, directory, "b"))
            a, b = nodes
            print(
                f"flooding A with {args.rate:g} events/s of ~{args.size} bytes, batches of "
                f"{args.batch}, for {args.seconds:g} s; {args.subs} connections on B",
                flush=True,
            )
            result = trio.run(flood, args, a, b)
            log = b.output()
        finally:
            for node in nodes:
                node.stop()
            redis.stop()
    counts: Counts = result["counts"]
    curve: list[tuple[float, float]] = result["curve"]
    rss = [mb for _, mb in curve]
    cutoff_lines = log.count("behind the cluster")
    summary = {
        "tree": str(tree),
        "seconds": result["seconds"],
        "capped": result["capped"],
        "events_accepted": result["sent"][0],
        "publish_refused": result["sent"][1],
        "connections": counts.connected,
        "b_rss_mb": {
            "start": rss[0] if rss else None,
            "peak": max(rss, default=None),
            "end": rss[-1] if rss else None,
            "curve": rss,
        },
        "b_cutoffs_logged": cutoff_lines,
        # Its subscription ended otherwise (Redis drops a Pub/Sub client whose output
        # buffer passes client-output-buffer-limit), and its catch-ups from the streams.
        "b_backplane_lost_logged": log.count("backplane lost"),
        "b_catch_ups_logged": log.count("event(s) missed while"),
        "b_metrics": result["metrics"],
        "notices_received": {
            "events_dropped": counts.dropped_notices,
            "backplane_gap": counts.gap_notices,
        },
        "mb_received": round(counts.bytes / 2**20, 1),
    }
    print(json.dumps(summary), flush=True)
    return 0


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


if __name__ == "__main__":
    sys.exit(main())
