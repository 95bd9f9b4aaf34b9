"""`python -m bench curves`: hubd against the Node `ws` and Python `websockets` peers as the
number of subscribers grows (1k, 5k, 10k, 20k by default), through the shared side-by-side
harness (`../shared/bench/run.sh`: hub pinned to CPU 0, Node load generator on CPU 1).

For each size, each repetition and each scenario, the hubs run back to back (hubd, Node,
Python), so that the three figures of a cell are measured minutes apart on the same machine:

- `idle` (`--subs N --hold 20`): the hub's RSS per connection, the connections still open at
  the end, then one probe event published to all N: its latency distribution (publish POST
  sent -> each subscriber's receipt, on the load generator's clock: p50/p99/max) and how
  many subscribers it reached;
- `fanout` (`--subs N`, batches published as fast as the in-flight window allows for 10 s):
  deliveries/s and loss. The harness' window (2,000 events per subscriber at 500
  subscribers, 1M deliveries in flight) would put 40M deliveries in flight at 20k: the
  window here keeps the same 1M deliveries in flight at every size (`--inflight`), and the
  batch at most half the window;
- `connect` as a reconnect storm (`--subs N --connect-rate 0 --connect-concurrency N`):
  all N clients connect at once; seconds until the last has its confirmation, and failures.
  Each client waits up to `--storm-timeout` (120 s) for its confirmation, so that a failure
  is the hub's refusal, reset or close, not the load generator's impatience.

Every run.sh summary goes to OUT/runs.jsonl (the load generator's JSON line with a "curves"
key added); at the end (or on Ctrl-C) the medians go to one markdown table (stdout and
OUT/table.md) and a 2x2 PNG (matplotlib, `pip install -e '.[bench]'` or `make bench-curves`).

    python -m bench curves                                   # 1k-20k, 3 reps
    python -m bench curves --sizes 500,1000 --reps 1 --hold 5
    python -m bench curves --dry-run                         # the plan and its duration
    python -m bench curves --from OUT/runs.jsonl --plot x.png  # redraw from saved runs
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HARNESS = ROOT.parent / "shared" / "bench"
DEFAULT_SIZES = (1000, 5000, 10000, 20000)
SCENARIOS = ("idle", "fanout", "connect")
# The hubs, in the order each cell runs them; run.sh's TARGET for each is `target()`.
HUBS = ("hubd", "node-ws", "py-websockets")
NAMES = {"hubd": "hubd", "node-ws": "Node ws", "py-websockets": "Python websockets"}
COLORS = {"hubd": "tab:blue", "node-ws": "tab:green", "py-websockets": "tab:orange"}

# Open files each process needs beyond one per connection (stdio, epoll, the publisher's
# socket, /proc reads in the load generator; listeners and logs in the hub).
FD_HEADROOM = 64
# Deliveries the fan-out window lets be in flight at every size: the harness' own fanout
# (500 subscribers x 2000 events).
DEFAULT_INFLIGHT = 1_000_000
HARNESS_WINDOW = 2000
HARNESS_BATCH = 50
# hubd closes a connection that sends nothing for hub.idle_timeout (60 s in serve.sh). The
# load generator starts its pings only once every connection is open, and at 20k that alone
# can take most of a minute: long enough for hubd to close the first ones. The peers have
# no such timeout; this moves hubd's out of the way (it costs no memory).
IDLE_TIMEOUT = 300
RUN_RC_CONTAMINATED = 3  # run.sh: other processes used a pinned core (or the loadgen timed out)

# Time model for the estimate (seconds), from runs at 500 and 1,000 subscribers on the
# 2-core reference machine (2026-12-05): run.sh's own start and stop (busy sample, core
# probes, hub start and stop), connections/s while connecting at --connect-rate 1000 (100
# handshakes in flight) and in a storm, fan-out deliveries/s. The estimate of what is left
# is rescaled by how long the runs so far took against it (waits for quiet left out).
RUN_OVERHEAD_S = {"hubd": 4.5, "node-ws": 3.0, "py-websockets": 3.0}
CONNECT_PER_S = {"hubd": 550.0, "node-ws": 950.0, "py-websockets": 850.0}
STORM_PER_S = {"hubd": 550.0, "node-ws": 1300.0, "py-websockets": 1200.0}
FANOUT_PER_S = {"hubd": 180_000.0, "node-ws": 75_000.0, "py-websockets": 65_000.0}
CLOSE_PER_S = 4000.0  # the load generator's close of every connection at the end

NONE = "\u2013"  # an en dash: no figure
TIMES = "\u00d7"  # the ratio columns' multiplication sign


@dataclass(frozen=True)
class Options:
    hold: float = 20.0
    fanout_seconds: float = 10.0
    inflight: int = DEFAULT_INFLIGHT
    storm_timeout: float = 120.0
    parse: str = "fast"


@dataclass(frozen=True)
class Run:
    size: int
    rep: int
    scenario: str
    hub: str


def plan(
    sizes: Sequence[int], reps: int, scenarios: Sequence[str], hubs: Sequence[str]
) -> list[Run]:
    """Every run, in order: size, then repetition, then scenario, then hub (innermost), so
    the hubs compared in one cell run back to back."""
    return [
        Run(size, rep, scenario, hub)
        for size in sizes
        for rep in range(1, reps + 1)
        for scenario in scenarios
        for hub in hubs
    ]


def fanout_window(size: int, inflight: int = DEFAULT_INFLIGHT) -> tuple[int, int]:
    """(window, batch) for `size` subscribers: the window (events in flight per subscriber
    on average) keeps `inflight` deliveries in flight, at most the harness' 2000; the batch
    is at most half the window (the publisher waits while window < published + batch)."""
    window = max(2, min(HARNESS_WINDOW, inflight // max(1, size)))
    batch = max(1, min(HARNESS_BATCH, window // 2))
    return window, batch


def connect_seconds(run: Run) -> float:
    return run.size / min(1000.0, CONNECT_PER_S[run.hub])


def loadgen_args(run: Run, opts: Options) -> list[str]:
    """The options given to run.sh after its scenario (they override the scenario's)."""
    n = run.size
    common = ["--subs", str(n), "--parse", opts.parse, "--label", f"{run.hub}/{run.scenario}/{n}"]
    # The hard cap on the whole run, generous: connecting at 300/s, plus the phase.
    connecting = n / 300.0
    if run.scenario == "idle":
        timeout = connecting + opts.hold + 60
        args = ["--hold", f"{opts.hold:g}", "--connect-rate", "1000"]
    elif run.scenario == "fanout":
        window, batch = fanout_window(n, opts.inflight)
        timeout = connecting + opts.fanout_seconds + 60 + 30
        args = [
            *("--duration", f"{opts.fanout_seconds:g}", "--window", str(window)),
            *("--batch", str(batch), "--drain", "60", "--connect-rate", "1000"),
        ]
    elif run.scenario == "connect":
        timeout = opts.storm_timeout + 60
        args = [
            *("--connect-rate", "0", "--connect-concurrency", str(n)),
            *("--connect-timeout", f"{opts.storm_timeout:g}"),
        ]
    else:
        raise ValueError(f"unknown scenario {run.scenario!r}")
    return [*common, *args, "--timeout", str(round(timeout))]


def estimate_seconds(run: Run, opts: Options) -> float:
    """How long one run.sh invocation should take on a quiet machine (no quiet wait)."""
    n, hub = run.size, run.hub
    close = n / CLOSE_PER_S
    base = RUN_OVERHEAD_S[hub] + close
    if run.scenario == "idle":
        return base + connect_seconds(run) + opts.hold + 0.5 + n / 20_000
    if run.scenario == "fanout":
        # what is in flight when publishing stops: about one batch per subscriber
        _, batch = fanout_window(n, opts.inflight)
        drain = min(60.0, batch * n / FANOUT_PER_S[hub])
        return base + connect_seconds(run) + 0.5 + opts.fanout_seconds + drain
    return base + n / STORM_PER_S[hub]


def target(hub: str) -> str:
    """run.sh's TARGET: the peers by name, hubd through bench/serve.sh."""
    return f"exec {ROOT / 'bench' / 'serve.sh'}" if hub == "hubd" else hub


# ---------------------------------------------------------------- running


def free_port_pair() -> tuple[int, int]:
    """Two free loopback ports below the ephemeral range, away from the harness' default
    18080/18081 (other benchmarks on this machine use those)."""
    for _ in range(200):
        port = random.randrange(20000, 31000, 2)
        if all(_port_free(p) for p in (port, port + 1)):
            return port, port + 1
    raise SystemExit("curves: no free pair of loopback ports found in 20000-31000")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Interrupted(Exception):
    pass


def on_term(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


@dataclass
class Attempt:
    rc: int
    summary: dict[str, Any] | None
    quiet_wait_s: float  # run.sh waiting for the machine to be quiet before starting
    wall_s: float


QUIET_LINE = "waiting for quiet"
QUIET_STEP_S = 6.0  # run.sh: a 1 s busy sample, then 5 s of sleep, per "waiting" line


def run_once(run: Run, opts: Options, harness: Path, out: Path, log: Any) -> Attempt:
    """One run.sh invocation for `run`; its stderr goes to `log` (and its first wait for a
    quiet machine to the progress output)."""
    env = {
        "HUBD_BENCH_MAX_CONNECTIONS": str(max(20000, run.size + 100)),
        "HUBD_BENCH_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    }
    args = loadgen_args(run, opts)
    return run_harness(harness, run.hub, run.scenario, args, out, log, env, "curves", progress)


def run_harness(
    harness: Path,
    hub: str,
    scenario: str,
    args: Sequence[str],
    out: Path,
    log: Any,
    env: dict[str, str],
    tag: str,
    note: Callable[[str], None],
) -> Attempt:
    """One `run.sh target(hub) scenario *args` on a free pair of ports, with `env` added to
    its environment; its logs and results under `out`/harness, its stderr to `log` (after a
    `=== tag: ...` line), its first wait for a quiet machine to `note`."""
    port, pub_port = free_port_pair()
    full_env = dict(os.environ)
    full_env.update(
        PORT=str(port),
        PUB_PORT=str(pub_port),
        BENCH_OUT=str(out / "harness"),
        RESULTS=str(out / "harness" / "runs.jsonl"),
    )
    full_env.update(env)
    command = [str(harness / "run.sh"), target(hub), scenario, *args]
    log.write(f"\n=== {tag}: {' '.join(command)} (PORT={port} PUB_PORT={pub_port})\n")
    log.flush()
    started = time.monotonic()
    waits = 0
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(
            command, env=full_env, stdout=stdout, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if QUIET_LINE in line:
                    waits += 1
                    if waits == 1:
                        note(f"  {line.strip()} (up to QUIET_WAIT s)")
            log.flush()
            proc.wait()
        except BaseException:
            # Ctrl-C or SIGTERM: let run.sh stop its hub and load generator (its EXIT trap).
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        stdout.seek(0)
        text = stdout.read()
    summary = None
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                continue
    wall = time.monotonic() - started
    return Attempt(proc.returncode, summary, min(wall, waits * QUIET_STEP_S), wall)


def until_undisturbed(
    once: Callable[[], Attempt], tries: int, note: Callable[[str], None]
) -> list[Attempt]:
    """`once()`, again (up to `tries` in all) while run.sh says other processes used a
    pinned core; every attempt, the one that counts last."""
    attempts: list[Attempt] = []
    for n in range(1, tries + 1):
        attempt = once()
        attempts.append(attempt)
        if not contaminated(attempt.rc, attempt.summary):
            break
        if n < tries:
            note(f"  other processes used a pinned core; again ({n + 1}/{tries})")
    return attempts


def execute(
    run: Run, opts: Options, harness: Path, out: Path, tries: int, log: Any
) -> dict[str, Any]:
    """Run `run`, again (up to `tries` in all) while run.sh says other processes used a
    pinned core; the record written to runs.jsonl: the summary with a "curves" key."""
    attempts = until_undisturbed(lambda: run_once(run, opts, harness, out, log), tries, progress)
    which = {"hub": run.hub, "size": run.size, "scenario": run.scenario, "rep": run.rep}
    return harness_record(attempts, "curves", which)


def harness_record(attempts: list[Attempt], key: str, which: dict[str, Any]) -> dict[str, Any]:
    """The record runs.jsonl keeps of a run tried `attempts` times: the last summary, with
    `which` run it was and how it went (exit status, tries, disturbed, time) under `key`."""
    last = attempts[-1]
    record: dict[str, Any] = dict(last.summary) if last.summary else {"result": "no_summary"}
    record[key] = {
        **which,
        "rc": last.rc,
        "tries": len(attempts),
        "contaminated": contaminated(last.rc, last.summary),
        "wall_s": round(sum(a.wall_s for a in attempts), 1),
        "quiet_wait_s": round(sum(a.quiet_wait_s for a in attempts), 1),
    }
    return record


def contaminated(rc: int, summary: dict[str, Any] | None) -> bool:
    """run.sh's exit 3 means other processes used a pinned core, unless the load generator
    itself timed out (its own exit 3; its summary then says "timeout")."""
    return rc == RUN_RC_CONTAMINATED and summary is not None and summary.get("result") == "ok"


def progress(line: str) -> None:
    print(f"[curves] {line}", file=sys.stderr, flush=True)


def waited(record: dict[str, Any]) -> str:
    c = record["curves"]
    parts = [f"{c['quiet_wait_s']:.0f} s waiting for quiet"] if c["quiet_wait_s"] else []
    if c["tries"] > 1:
        parts.append(f"{c['tries']} tries")
    return f", {', '.join(parts)}" if parts else ""


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def digest(record: dict[str, Any]) -> str:
    """One line of what a run measured, for the progress output."""
    c = record["curves"]
    n = c["size"]
    if record.get("result") == "no_summary":
        return f"no summary (run.sh exit {c['rc']}; see harness.log)"
    parts: list[str] = []
    scenario = c["scenario"]
    if scenario == "idle":
        parts.append(f"{fmt(dig(record, 'idle.rss_kb_per_conn'), 1)} KB/conn")
        parts.append(f"held {fmt(dig(record, 'idle.survived'), 0)}/{n:,}")
        reached = fmt(dig(record, "idle.probe_received"), 0)
        p = [fmt(dig(record, f"idle.probe_ms.{q}"), 1) for q in ("p50", "p99", "max")]
        parts.append(f"one event reached {reached}, p50/p99/max {'/'.join(p)} ms")
    elif scenario == "fanout":
        parts.append(f"{fmt(dig(record, 'delivery.deliveries_per_s'), 0)} deliveries/s")
        parts.append(f"loss {fmt(dig(record, 'delivery.loss_pct'), 3)} %")
        if dig(record, "loadgen.client_bound"):
            parts.append("load generator saturated")
    else:
        parts.append(f"{fmt(dig(record, 'connections.seconds'), 2)} s until all confirmed")
        parts.append(f"{fmt(dig(record, 'connections.failed'), 0)} failed")
    if record.get("result") != "ok":
        parts.append(f"result {record.get('result')}")
    if c["contaminated"]:
        parts.append("CONTAMINATED")
    errors = record.get("errors") or {}
    if errors:
        parts.append("errors " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    return ", ".join(parts)


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    scenario: str
    paths: tuple[str, ...]  # dotted paths into a summary; two: shown as "a / b"
    combine: str  # over repetitions: "median", or "min"/"max" (the worst run)
    better: str | None  # "lower" / "higher": the ratio columns; None: no ratio
    digits: int


METRICS = (
    Metric(
        "kb_per_conn",
        "idle: KB per connection",
        "idle",
        ("idle.rss_kb_per_conn",),
        "median",
        "lower",
        1,
    ),
    Metric(
        "held_reached",
        "idle: held to the end / reached by the one event",
        "idle",
        ("idle.survived", "idle.probe_received"),
        "min",
        None,
        0,
    ),
    Metric(
        "probe_p50",
        "one event to all: p50 ms",
        "idle",
        ("idle.probe_ms.p50",),
        "median",
        "lower",
        1,
    ),
    Metric(
        "probe_p99",
        "one event to all: p99 ms",
        "idle",
        ("idle.probe_ms.p99",),
        "median",
        "lower",
        1,
    ),
    Metric(
        "probe_max",
        "one event to all: max ms",
        "idle",
        ("idle.probe_ms.max",),
        "median",
        "lower",
        1,
    ),
    Metric(
        "fanout_dps",
        "fan-out: deliveries/s",
        "fanout",
        ("delivery.deliveries_per_s",),
        "median",
        "higher",
        0,
    ),
    Metric(
        "fanout_loss",
        "fan-out: loss % (worst run)",
        "fanout",
        ("delivery.loss_pct",),
        "max",
        None,
        3,
    ),
    Metric(
        "storm_s",
        "reconnect storm: s until all confirmed",
        "connect",
        ("connections.seconds",),
        "median",
        "lower",
        2,
    ),
    Metric(
        "storm_failed",
        "reconnect storm: failures (worst run)",
        "connect",
        ("connections.failed",),
        "max",
        None,
        0,
    ),
)


def dig(record: dict[str, Any], path: str) -> Any:
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def combine(values: Iterable[float | None], how: str) -> float | None:
    """The median (or min, max) of the values that are numbers; None if there are none."""
    xs = [x for x in values if x is not None]
    if not xs:
        return None
    if how == "min":
        return min(xs)
    if how == "max":
        return max(xs)
    return float(statistics.median(xs))


def fmt(value: Any, digits: int) -> str:
    x = number(value)
    if x is None:
        return NONE
    if abs(x) >= 1000 or digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


@dataclass
class Cell:
    values: tuple[float | None, ...]  # one per path of the metric, combined over runs
    runs: int
    flags: str  # footnote marks


def cells(records: Sequence[dict[str, Any]]) -> dict[tuple[int, str, str], Cell]:
    """(size, hub, metric key) -> the metric over that hub's runs at that size."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in records:
        c = r.get("curves") or {}
        groups.setdefault((c.get("size", 0), c.get("hub", "?"), c.get("scenario", "?")), []).append(
            r
        )
    out: dict[tuple[int, str, str], Cell] = {}
    for (size, hub, scenario), runs in groups.items():
        flags = ""
        if any(r["curves"].get("contaminated") for r in runs):
            flags += "†"
        if any(r.get("result") != "ok" for r in runs):
            flags += "‼"
        if scenario == "fanout" and any(dig(r, "loadgen.client_bound") for r in runs):
            flags += "‡"
        for m in METRICS:
            if m.scenario != scenario:
                continue
            values = tuple(combine((number(dig(r, p)) for r in runs), m.combine) for p in m.paths)
            out[(size, hub, m.key)] = Cell(values, len(runs), flags)
    return out


def ratio(a: Cell | None, b: Cell | None) -> str:
    if a is None or b is None or a.values[0] is None or not b.values[0]:
        return NONE
    return f"{a.values[0] / b.values[0]:.2f}{TIMES}"


def table(records: Sequence[dict[str, Any]]) -> str:
    """The markdown table: a row per size and figure, a column per hub, then hubd / Python
    and hubd / Node; footnotes for the marks used."""
    got = cells(records)
    sizes = sorted({k[0] for k in got})
    hubs = [h for h in HUBS if any(k[1] == h for k in got)]
    peers = [p for p in ("py-websockets", "node-ws") if p in hubs and "hubd" in hubs]
    head = ["N", "figure", *(NAMES[h] for h in hubs)]
    head += [f"hubd / {NAMES[p].split()[0]}" for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marks = ""
    for size in sizes:
        for m in METRICS:
            row = [cell_text(got.get((size, h, m.key)), m) for h in hubs]
            if all(x == NONE for x in row):
                continue
            for h in hubs:
                cell = got.get((size, h, m.key))
                marks += cell.flags if cell else ""
            ratios = [
                ratio(got.get((size, "hubd", m.key)), got.get((size, p, m.key))) if m.better else ""
                for p in peers
            ]
            lines.append("| " + " | ".join([f"{size:,}", m.label, *row, *ratios]) + " |")
    notes = [
        "Medians over the repetitions (worst run where marked). Ratios are hubd's figure over "
        "the peer's, measured in the same run: lower is better for KB, ms and seconds, higher "
        "for deliveries/s."
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(notes + footnotes(marks)) + "\n"


# What the marks in a table's cells say, in the order the notes list them.
MARKS = {
    "†": "other processes used a pinned core during a run (run.sh exit 3).",
    "‼": "a run did not complete (load generator timeout, or no summary).",
    "‡": "the load generator's core was saturated in a run: the hub may be faster.",
}


def footnotes(marks: Iterable[str]) -> list[str]:
    """The notes for the marks a table used."""
    used = set(marks)
    return [f"{mark} {text}" for mark, text in MARKS.items() if mark in used]


def cell_text(cell: Cell | None, m: Metric) -> str:
    if cell is None:
        return NONE
    return " / ".join(fmt(v, m.digits) for v in cell.values) + cell.flags


def series(records: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """hub -> (sizes, values) of one metric's first path, sizes ascending, gaps left out."""
    got = cells(records)
    out: dict[str, tuple[list[int], list[float]]] = {}
    for hub in HUBS:
        points: list[tuple[int, float]] = []
        for (size, h, k), c in got.items():
            value = c.values[0]
            if h == hub and k == key and value is not None:
                points.append((size, value))
        if points:
            points.sort()
            out[hub] = ([p[0] for p in points], [p[1] for p in points])
    return out


def axis_number(value: float, _position: int | None = None) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def plot_notes(records: Sequence[dict[str, Any]]) -> str:
    """What to read the PNG with: disturbed, unfinished and client-bound runs."""
    notes = []
    disturbed = sum(1 for r in records if r["curves"].get("contaminated"))
    if disturbed:
        notes.append(f"{disturbed} of {len(records)} runs disturbed by other processes")
    unfinished = sum(1 for r in records if r.get("result") != "ok")
    if unfinished:
        notes.append(f"{unfinished} runs did not complete")
    fanout = [r for r in records if r["curves"].get("scenario") == "fanout"]
    bound = sum(1 for r in fanout if dig(r, "loadgen.client_bound"))
    if bound:
        notes.append(f"load generator saturated in {bound} of {len(fanout)} fan-out runs")
    return "; ".join(notes)


def plot(records: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """The 2x2 PNG: KB per connection, one event to all (p99 solid, max dashed), fan-out
    deliveries/s, reconnect storm seconds (failures written at the point); x: subscribers."""
    # Imported here, untyped: `make lint` type-checks bench/ in the test venv, which does
    # not have the `bench` extra; everything else in this module works without it.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    ticker: Any = importlib.import_module("matplotlib.ticker")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    panels = [
        (axes[0][0], "kb_per_conn", "Idle: server KB per connection (lower is better)", None),
        (axes[0][1], "probe_p99", "One event to all N: p99 — and max ····· (ms)", "probe_max"),
        (axes[1][0], "fanout_dps", "Fan-out: deliveries/s (higher is better)", None),
        (axes[1][1], "storm_s", "Reconnect storm: s until all N confirmed", None),
    ]
    all_sizes = sorted({int(r["curves"]["size"]) for r in records if "curves" in r})
    failed = series(records, "storm_failed")
    for ax, key, heading, dashed in panels:
        for hub, (xs, ys) in series(records, key).items():
            ax.plot(xs, ys, marker="o", color=COLORS[hub], label=NAMES[hub])
            if dashed:
                dx, dy = series(records, dashed).get(hub, ([], []))
                ax.plot(dx, dy, marker=".", linestyle=":", color=COLORS[hub])
            if key == "storm_s":
                fails = dict(zip(*failed.get(hub, ([], [])), strict=True))
                for x, y in zip(xs, ys, strict=True):
                    if fails.get(x):
                        ax.annotate(
                            f"{fails[x]:,.0f} failed",
                            (x, y),
                            textcoords="offset points",
                            xytext=(4, 4),
                            color=COLORS[hub],
                            fontsize=8,
                        )
        ax.set_title(heading, fontsize=11)
        ax.set_xscale("log")
        ax.set_xticks(all_sizes)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}k"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("subscribers (N)")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(axis_number))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", color="grey")
    fig.suptitle(title, fontsize=12)
    notes = plot_notes(records)
    if notes:
        fig.text(0.5, -0.01, notes, ha="center", va="top", fontsize=9, color="dimgrey")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- main


def commit() -> str:
    """The checked-out commit, "+dirty" with uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def fd_check(sizes: Sequence[int]) -> list[str]:
    """Problems: sizes whose connections cannot fit under the open-file hard limit (run.sh
    raises the soft limit to 65536 or to the hard limit; both the load generator and the
    hub hold one descriptor per connection)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return []
    return [
        f"{n:,} connections need an open-file limit of at least {n + FD_HEADROOM:,} in the "
        f"load generator and in the hub; the hard limit here is {hard:,}, which run.sh "
        "cannot raise (only root with CAP_SYS_RESOURCE can: ulimit -Hn, prlimit, "
        "LimitNOFILE=). Beyond it both get EMFILE: failed connections, and the load "
        "generator can no longer read the hub's RSS or publish the probe event"
        for n in sizes
        if n + FD_HEADROOM > hard
    ]


def read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "curves" in record:
            records.append(record)
    return records


def report(records: list[dict[str, Any]], out: Path | None, plot_path: Path | None) -> None:
    if not records:
        progress("no runs to report")
        return
    text = table(records)
    print(text, flush=True)
    if out is not None:
        (out / "table.md").write_text(text)
        progress(f"table: {out / 'table.md'}")
    if plot_path is not None:
        reps = max(int(r["curves"].get("rep", 1)) for r in records)
        meta = records[0]["curves"]
        title = (
            f"hubd vs Node ws vs Python websockets, same run — medians of {reps} — "
            f"{meta.get('commit', '')} {meta.get('date', '')}".strip()
        )
        try:
            plot(records, plot_path, title)
        except ImportError:
            progress(
                "matplotlib is not installed: no PNG (make bench-curves installs it; or "
                ".venv/bin/pip install -c constraints.txt -e '.[bench]')"
            )
        else:
            progress(f"plot: {plot_path}")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return sizes


def parse_list(choices: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"{', '.join(bad) or 'nothing'}: choose from {','.join(choices)}"
            )
        return [c for c in choices if c in items]  # the canonical order

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench curves",
        description="hubd against the Node ws and Python websockets peers at growing "
        "subscriber counts, through the shared harness: one table and one PNG.",
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="subscriber counts (default 1000,5000,10000,20000)",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=3,
        help="repetitions of every run (default 3: the medians docs/performance.md quotes; "
        "one run of a p99 or a storm on this shared machine is noise)",
    )
    parser.add_argument(
        "--hubs",
        type=parse_list(HUBS),
        default=list(HUBS),
        help="default hubd,node-ws,py-websockets",
    )
    parser.add_argument(
        "--scenarios",
        type=parse_list(SCENARIOS),
        default=list(SCENARIOS),
        help="default idle,fanout,connect",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for runs.jsonl, table.md, the PNG "
        "and run.sh's logs (default /tmp/hub-bench-results/curves-DATE)",
    )
    parser.add_argument("--plot", type=Path, help="the PNG (default OUT/curves.png)")
    parser.add_argument(
        "--harness",
        type=Path,
        default=DEFAULT_HARNESS,
        help=f"the shared harness (default {DEFAULT_HARNESS})",
    )
    parser.add_argument(
        "--tries",
        type=int,
        default=3,
        help="runs per figure while other processes disturb them (run.sh "
        "exit 3; default 3, as compare.sh)",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=Options.hold,
        help="idle: seconds the connections are held (default 20, as run.sh)",
    )
    parser.add_argument(
        "--fanout-seconds",
        type=float,
        default=Options.fanout_seconds,
        help="fanout: seconds of publishing (default 10, as run.sh)",
    )
    parser.add_argument(
        "--inflight",
        type=int,
        default=DEFAULT_INFLIGHT,
        help="fanout: deliveries in flight at most (window x N; default 1M)",
    )
    parser.add_argument(
        "--storm-timeout",
        type=float,
        default=Options.storm_timeout,
        help="connect: seconds each client waits for its confirmation (120)",
    )
    parser.add_argument(
        "--parse",
        choices=["fast", "json"],
        default=Options.parse,
        help="the load generator's frame parser (default fast: its cost per "
        "frame, which grows with N, stays small against the hub's)",
    )
    parser.add_argument(
        "--allow-fd-shortfall",
        action="store_true",
        help="run sizes the open-file limit cannot hold (expect failures)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its duration")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        help="no runs: the table and PNG from a saved runs.jsonl",
    )
    args = parser.parse_args(argv)

    if args.source:
        saved = read_records(args.source)
        report(saved, None, args.plot or args.source.with_name("curves.png"))
        return 0 if saved else 1

    opts = Options(args.hold, args.fanout_seconds, args.inflight, args.storm_timeout, args.parse)
    runs = plan(args.sizes, args.reps, args.scenarios, args.hubs)
    estimate = sum(estimate_seconds(r, opts) for r in runs)
    progress(
        f"plan: {len(runs)} runs ({len(args.sizes)} sizes x {args.reps} reps x "
        f"{len(args.scenarios)} scenarios x {len(args.hubs)} hubs), about {clock(estimate)} on "
        "a quiet machine (run.sh waits up to QUIET_WAIT=300 s for quiet before each run, and "
        "a disturbed run is tried again)"
    )
    problems = fd_check(args.sizes)
    for p in problems:
        progress(f"{'WARNING' if args.allow_fd_shortfall else 'ERROR'}: {p}")
    if args.dry_run:
        for i, r in enumerate(runs, 1):
            print(
                f"{i:3d} ~{estimate_seconds(r, opts):5.0f}s  run.sh {target(r.hub)!r} "
                f"{r.scenario} {' '.join(loadgen_args(r, opts))}"
            )
        return 0
    if problems and not args.allow_fd_shortfall:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fits = [n for n in args.sizes if n + FD_HEADROOM <= hard]
        top = (hard - FD_HEADROOM) // 100 * 100
        sizes = ",".join(str(n) for n in [*fits, top] if n)
        progress(
            f"refusing to start: use --sizes {sizes}, raise the limit, or pass --allow-fd-shortfall"
        )
        return 2
    if not (args.harness / "run.sh").exists():
        progress(f"no run.sh in {args.harness} (--harness)")
        return 2

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or Path(os.environ.get("BENCH_OUT", "/tmp/hub-bench-results")) / (
        f"curves-{stamp}"
    )
    out.mkdir(parents=True, exist_ok=True)
    plot_path: Path = args.plot or out / "curves.png"
    meta = {"commit": commit(), "date": time.strftime("%Y-%m-%d")}
    progress(
        f"commit {meta['commit']}; raw runs: {out / 'runs.jsonl'}; run.sh log: "
        f"{out / 'harness.log'}"
    )

    signal.signal(signal.SIGTERM, on_term)
    records: list[dict[str, Any]] = []
    t0 = time.monotonic()
    spent = predicted = 0.0
    status = 0
    try:
        with (out / "harness.log").open("a") as log, (out / "runs.jsonl").open("a") as raw:
            for i, run in enumerate(runs, 1):
                progress(
                    f"{i}/{len(runs)} N={run.size:,} rep {run.rep}/{args.reps} {run.scenario} "
                    f"{run.hub} ..."
                )
                record = execute(run, opts, args.harness, out, args.tries, log)
                record["curves"].update(meta)
                records.append(record)
                raw.write(json.dumps(record) + "\n")
                raw.flush()
                spent += record["curves"]["wall_s"] - record["curves"]["quiet_wait_s"]
                predicted += estimate_seconds(run, opts)
                left = sum(estimate_seconds(r, opts) for r in runs[i:]) * spent / predicted
                progress(
                    f"{i}/{len(runs)} N={run.size:,} {run.scenario} {run.hub}: {digest(record)} "
                    f"({record['curves']['wall_s']:.0f} s{waited(record)}; elapsed "
                    f"{clock(time.monotonic() - t0)}, about {clock(left)} left)"
                )
    except (KeyboardInterrupt, Interrupted):
        progress("interrupted: reporting the runs so far")
        status = 130
    report(records, out, plot_path)
    progress(f"done in {clock(time.monotonic() - t0)}; raw runs: {out / 'runs.jsonl'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
