"""`python -m bench`: hubd's own benchmarks (see bench/README.md).

    python -m bench core                 # the core alone, in process, no sockets
    python -m bench load [SCENARIO ...]  # a real `hubd serve` on loopback, started here
    python -m bench load fanout --persist both  # also with hub.history_path on, same run
    python -m bench cluster              # fan-out across two nodes sharing a redis-server
    python -m bench                      # core, load, cluster, then peers: what `make bench` runs
    python -m bench abuse [--quick ...]  # legitimate traffic under attack (bench/abuse.py)
    python -m bench mailbox [--reps N]   # Mailbox vs a memory-channel one (bench/mailbox.py)
    python -m bench curves [--sizes ...] # hubd vs two peers at 1k-20k subscribers (bench/curves.py)
    python -m bench peers [--reps N]     # end-to-end latency vs two peers, targets (bench/peers.py)

Each figure is the median of --reps runs; `load` also prints the batch=1 / default ratio
measured in the same run, which is what to quote on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench.core import run_core
from bench.daemon import terminate, wait_ready
from bench.loadgen import Target, median_summary, rss_kb, run_scenario
from bench.redis_process import RedisProcess

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS: dict[str, dict[str, Any]] = {
    "light": {"subs": 20, "rate": 50, "duration": 5},
    "fanout": {"subs": 200, "batch": 50, "duration": 5, "window": 2000},
    "idle": {"subs": 1000, "hold": 3, "connect_concurrency": 100},
    "connect": {"subs": 1000, "connect_concurrency": 200},
}

CONFIG = """
[server]
listen = ["127.0.0.1:0"]
shutdown_timeout = 3.0
[hub]
idle_timeout = 120.0
[limits]
max_connections = 20000
[log]
level = "info"
[[auth.tokens]]
name = "bench"
token = "bench"
roles = ["admin"]
"""


class Server:
    """A `hubd serve` subprocess on a free loopback port. With `persist`, its history is
    kept in a fresh file (`hub.history_path`) in a temporary directory."""

    def __init__(self, extra: str = "", *, persist: bool = False) -> None:
        self.history_dir = tempfile.mkdtemp(prefix="hubd-bench-history-") if persist else None
        config = CONFIG
        if self.history_dir is not None:
            path = os.path.join(self.history_dir, "history.db")
            config = config.replace("[hub]\n", f"[hub]\nhistory_path = {json.dumps(path)}\n")
        fd, self.config = tempfile.mkstemp(suffix=".toml", prefix="hubd-bench-")
        with os.fdopen(fd, "w") as f:
            f.write(config + extra)
        # The log goes to a file, not a pipe: a pipe nobody drains would block the server.
        self.log = self.config.replace(".toml", ".log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hubd", "serve", "--config", self.config],
                stderr=log,
                cwd=ROOT,
            )
        self.port = wait_ready(self.proc, self.log, 20)
        if not self.port:
            self.stop()
            raise RuntimeError(f"hubd did not start; see {self.log}")

    def stop(self) -> None:
        terminate(self.proc, 10)
        os.unlink(self.config)
        os.unlink(self.log)
        if self.history_dir is not None:
            import shutil

            shutil.rmtree(self.history_dir, ignore_errors=True)


def run_load(scenarios: list[str], reps: int, persist: str = "off") -> list[dict[str, Any]]:
    """Each scenario's median over `reps` runs, per batch mode. `persist`: "off" (the
    in-memory history), "on" (`hub.history_path` set), or "both": each rep runs once
    without and once with it, back to back, so the ratio compares like with like on a
    shared machine."""
    ulimit_raise()
    summaries: list[dict[str, Any]] = []
    histories = {"off": [False], "on": [True], "both": [False, True]}[persist]
    for name in scenarios:
        modes = [False, True] if name in ("light", "fanout") else [False]
        for batch in modes:
            results: dict[bool, list[dict[str, Any]]] = {h: [] for h in histories}
            for _ in range(reps):
                for history in histories:
                    server = Server(persist=history)
                    try:
                        opts = dict(SCENARIOS[name])
                        opts["rss_before_kb"] = rss_kb(server.proc.pid)
                        target = Target("127.0.0.1", server.port, "bench", server.proc.pid, batch)
                        results[history].append(trio.run(_run, target, name, opts))
                    finally:
                        server.stop()
            for history in histories:
                summary = {"scenario": name, "batch": batch, **median_summary(results[history])}
                if persist != "off":
                    summary["history_path"] = history
                summaries.append(summary)
                print(json.dumps(summary), flush=True)
    by_key = {(s["scenario"], s["batch"], s.get("history_path", False)): s for s in summaries}
    for name in ("light", "fanout"):
        for history in histories:
            plain, batched = by_key.get((name, False, history)), by_key.get((name, True, history))
            if plain and batched and plain["deliveries_per_s"] and batched["deliveries_per_s"]:
                ratio = batched["deliveries_per_s"] / plain["deliveries_per_s"]
                label = " (history_path on)" if history else ""
                print(f"{name}: batch=1 / default deliveries/s = {ratio:.2f}x (same run){label}")
        if persist == "both":
            for batch in (False, True):
                off, on = by_key.get((name, batch, False)), by_key.get((name, batch, True))
                if off and on and off["deliveries_per_s"] and on["deliveries_per_s"]:
                    ratio = on["deliveries_per_s"] / off["deliveries_per_s"]
                    print(
                        f"{name} batch={int(batch)}: history_path on / off deliveries/s = "
                        f"{ratio:.2f}x ({on['deliveries_per_s']:.0f} / "
                        f"{off['deliveries_per_s']:.0f}, same run)"
                    )
    return summaries


CLUSTER = {"subs": 200, "batch": 50, "duration": 5, "window": 2000}


def run_cluster(reps: int) -> dict[str, Any]:
    """Fan-out with the publisher on node A and subscribers split over nodes A and B
    (sharing one redis-server), against one in-memory node in the same run."""
    ulimit_raise()
    redis = RedisProcess("bench cluster")
    single: list[dict[str, Any]] = []
    cluster: list[dict[str, Any]] = []
    try:
        for rep in range(reps):
            server = Server()
            try:
                target = Target("127.0.0.1", server.port, "bench", server.proc.pid)
                single.append(trio.run(_run, target, "cluster", dict(CLUSTER)))
            finally:
                server.stop()
            backplane = (
                f'\n[backplane]\nkind = "redis"\nurl = "redis://127.0.0.1:{redis.port}/0"\n'
                f'prefix = "bench{rep}-{os.getpid()}"\n'
            )
            a, b = Server(backplane), Server(backplane)
            try:
                target = Target("127.0.0.1", a.port, "bench", None, sub_ports=(a.port, b.port))
                cluster.append(trio.run(_run, target, "cluster", dict(CLUSTER)))
            finally:
                a.stop()
                b.stop()
    finally:
        redis.stop()
    one, two = median_summary(single), median_summary(cluster)
    summary = {"scenario": "cluster", "single_node": one, "two_nodes": two}
    if one.get("deliveries_per_s") and two.get("deliveries_per_s"):
        summary["two_nodes_over_single"] = round(
            two["deliveries_per_s"] / one["deliveries_per_s"], 2
        )
    print(json.dumps(summary), flush=True)
    return summary


async def _run(target: Target, name: str, opts: dict[str, Any]) -> dict[str, Any]:
    return await run_scenario(target, name, **opts)


def ulimit_raise() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["abuse"]:  # its own options: python -m bench abuse --help
        from bench.abuse import main as abuse_main

        return abuse_main(argv[1:])
    if argv[:1] == ["mailbox"]:  # its own options: python -m bench mailbox --help
        from bench.mailbox import main as mailbox_main

        return mailbox_main(argv[1:])
    if argv[:1] == ["curves"]:  # its own options: python -m bench curves --help
        from bench.curves import main as curves_main

        return curves_main(argv[1:])
    if argv[:1] == ["peers"]:  # its own options: python -m bench peers --help
        from bench.peers import main as peers_main

        return peers_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "what", nargs="?", default="all", choices=["all", "core", "load", "cluster"]
    )
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=", ".join(SCENARIOS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--persist",
        choices=["off", "on", "both"],
        default="off",
        help="load: keep the history in a file (hub.history_path): off, on, or both "
        "(each rep runs without and with it; prints the ratio)",
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    if args.what in ("all", "core"):
        print(json.dumps(run_core(reps=args.reps)), flush=True)
    if args.what in ("all", "load"):
        run_load(args.scenarios, args.reps, args.persist)
    if args.what in ("all", "cluster"):
        run_cluster(args.reps)
    if args.what == "all":
        # Against the peers, through the shared harness; a one-line skip when it cannot run.
        from bench.peers import main as peers_main

        return peers_main(["--reps", str(args.reps)], missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
