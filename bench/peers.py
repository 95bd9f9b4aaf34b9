"""`python -m bench peers`: a regression guard for end-to-end latency against the peers.

Through the shared side-by-side harness (`../shared/bench/run.sh`: hub pinned to CPU 0,
Node load generator on CPU 1), each scenario (`anchor` and `light` by default) runs hubd
(bench/serve.sh), the Node `ws` peer and the Python `websockets` peer back to back, `--reps`
times each, with the harness' own settings for the scenario (what compare.sh runs). The
latency is the load generator's: publish POST sent -> WebSocket receipt, on one clock.

It prints one table: per scenario and hub the medians of p50 / p99 / p99.9 ms over the reps
and the lost deliveries of the worst run, then hubd / Python and hubd / Node for p50 and p99
(ratios of the medians, measured in the same run); then the targets hubd holds itself to,
each met or NOT met:

    anchor p99 <= 1.00x Python, anchor p50 <= 1.10x Python, light p99 <= 1.00x Python,
    zero loss (hubd, every run)

Every run.sh summary goes to OUT/runs.jsonl (with a "peers" key added), the medians, ratios
and verdicts to OUT/medians.json, the table to OUT/table.md, run.sh's stderr to
OUT/harness.log. The exit status is 0 when every run completed without loss, whether or not
the targets are met (this is a report); 1 when a run failed or lost deliveries; 2 when the
harness cannot run here (no run.sh, no node, no taskset); 130 when interrupted.

    python -m bench peers                          # anchor and light, 3 reps (~6 min)
    python -m bench peers --reps 1 --scenarios light
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.curves import (
    DEFAULT_HARNESS,
    HUBS,
    NAMES,
    NONE,
    TIMES,
    Interrupted,
    clock,
    combine,
    commit,
    dig,
    fmt,
    footnotes,
    harness_record,
    number,
    on_term,
    parse_list,
    run_harness,
    until_undisturbed,
)

ROOT = Path(__file__).resolve().parent.parent
# The harness' location when --harness is not given: $BENCH_HARNESS, else ../shared/bench.
HARNESS_ENV = "BENCH_HARNESS"
SCENARIOS = ("anchor", "light")
PEERS = ("py-websockets", "node-ws")  # the ratio rows, in this order
SHORT = {"py-websockets": "Python", "node-ws": "Node"}
# The latency figures: (key, column heading, path into a run.sh summary).
FIGURES = (
    ("p50", "p50 ms", "latency_ms.p50"),
    ("p99", "p99 ms", "latency_ms.p99"),
    ("p999", "p99.9 ms", "latency_ms.p999"),
)
RATIO_FIGURES = ("p50", "p99")
# How long one run.sh invocation takes on a quiet machine (s): its own start and stop (busy
# sample, core probes, hub start and stop) plus the scenario's publishing and drain.
RUN_SECONDS = {"anchor": 26.0, "light": 15.0}


@dataclass(frozen=True)
class Target:
    """hubd's `figure` in `scenario` at most `limit` times the `peer`'s (same run)."""

    scenario: str
    figure: str
    peer: str
    limit: float

    def label(self) -> str:
        return f"{self.scenario} {self.figure} \u2264 {self.limit:.2f}{TIMES} {SHORT[self.peer]}"


TARGETS = (
    Target("anchor", "p99", "py-websockets", 1.0),
    Target("anchor", "p50", "py-websockets", 1.1),
    Target("light", "p99", "py-websockets", 1.0),
)
MET, NOT_MET, NO_FIGURE, NOT_RUN = "met", "NOT met", "no figure", "not run"


@dataclass(frozen=True)
class Run:
    scenario: str
    rep: int
    hub: str


def plan(scenarios: Sequence[str], reps: int, hubs: Sequence[str] = HUBS) -> list[Run]:
    """Every run, in order: scenario, then repetition, then hub (innermost), so the hubs
    compared in one repetition run back to back."""
    return [
        Run(scenario, rep, hub)
        for scenario in scenarios
        for rep in range(1, reps + 1)
        for hub in hubs
    ]


def estimate_seconds(runs: Sequence[Run]) -> float:
    return sum(RUN_SECONDS.get(r.scenario, 20.0) for r in runs)


# ---------------------------------------------------------------- figures


def failed(record: dict[str, Any]) -> bool:
    """The run did not complete: no summary, the load generator's result is not "ok", or
    run.sh failed (exit 3 with a complete summary only says other processes were busy)."""
    rc = dig(record, "peers.rc")
    return record.get("result") != "ok" or rc not in (0, 3, None)


def lost(record: dict[str, Any]) -> int:
    """Deliveries the run lost (0 without a figure: a run without one has failed)."""
    value = number(dig(record, "delivery.lost"))
    return int(value) if value is not None else 0


@dataclass(frozen=True)
class HubFigures:
    """One hub's figures in one scenario, over its repetitions."""

    runs: int
    ok: int  # runs that completed
    p50: float | None  # medians, ms
    p99: float | None
    p999: float | None
    lost: int | None  # lost deliveries in the worst run; None if no run has the figure
    loss_pct: float | None  # that run's loss %
    flags: str  # † disturbed, ‡ load generator saturated, ‼ a run did not complete


def hub_figures(runs: Sequence[dict[str, Any]]) -> HubFigures:
    medians = {
        key: combine((number(dig(r, path)) for r in runs if not failed(r)), "median")
        for key, _, path in FIGURES
    }
    with_loss = [r for r in runs if number(dig(r, "delivery.lost")) is not None]
    worst = max(with_loss, key=lost, default=None)
    flags = ""
    if any(dig(r, "peers.contaminated") for r in runs):
        flags += "\u2020"
    if any(dig(r, "loadgen.client_bound") for r in runs):
        flags += "\u2021"
    if any(failed(r) for r in runs):
        flags += "\u203c"
    return HubFigures(
        runs=len(runs),
        ok=sum(not failed(r) for r in runs),
        p50=medians["p50"],
        p99=medians["p99"],
        p999=medians["p999"],
        lost=None if worst is None else lost(worst),
        loss_pct=None if worst is None else number(dig(worst, "delivery.loss_pct")),
        flags=flags,
    )


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, HubFigures]]:
    """scenario -> hub -> its figures, scenarios and hubs in the order they ran."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in records:
        scenario, hub = dig(r, "peers.scenario"), dig(r, "peers.hub")
        groups.setdefault(str(scenario), {}).setdefault(str(hub), []).append(r)
    return {
        scenario: {hub: hub_figures(runs) for hub, runs in hubs.items()}
        for scenario, hubs in groups.items()
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None without both figures (or with b = 0)."""
    if a is None or not b:
        return None
    return a / b


def figure(figures: HubFigures | None, key: str) -> float | None:
    if figures is None:
        return None
    value: float | None = getattr(figures, key)
    return value


def ratios(summary: dict[str, dict[str, HubFigures]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario -> "hubd/<peer>" -> figure -> hubd's median over the peer's."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, hubs in summary.items():
        for peer in PEERS:
            if peer in hubs and "hubd" in hubs:
                out.setdefault(scenario, {})[f"hubd/{peer}"] = {
                    key: ratio(figure(hubs["hubd"], key), figure(hubs[peer], key))
                    for key in RATIO_FIGURES
                }
    return out


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: float | None  # the ratio, or the lost deliveries for zero loss
    verdict: str


def verdict(target: Target, summary: dict[str, dict[str, HubFigures]]) -> Verdict:
    """Met when hubd's median over the peer's, to two decimals (as printed), is at most the
    limit."""
    hubs = summary.get(target.scenario)
    if not hubs or "hubd" not in hubs or target.peer not in hubs:
        return Verdict(target.label(), None, NOT_RUN)
    value = ratio(figure(hubs["hubd"], target.figure), figure(hubs[target.peer], target.figure))
    if value is None:
        return Verdict(target.label(), None, NO_FIGURE)
    return Verdict(target.label(), value, MET if round(value, 2) <= target.limit else NOT_MET)


ZERO_LOSS = "zero loss (hubd, every run)"


def loss_verdict(records: Sequence[dict[str, Any]]) -> Verdict:
    """hubd lost no delivery in any run; "no figure" when no hubd run has the figure."""
    runs = [r for r in records if dig(r, "peers.hub") == "hubd"]
    counted = [r for r in runs if number(dig(r, "delivery.lost")) is not None]
    if not counted:
        return Verdict(ZERO_LOSS, None, NO_FIGURE if runs else NOT_RUN)
    total = sum(lost(r) for r in counted)
    return Verdict(ZERO_LOSS, total, MET if total == 0 else NOT_MET)


def verdicts(records: Sequence[dict[str, Any]]) -> list[Verdict]:
    summary = summarize(records)
    return [*(verdict(t, summary) for t in TARGETS), loss_verdict(records)]


def problems(records: Sequence[dict[str, Any]]) -> list[str]:
    """What makes the exit status 1: runs that failed or lost deliveries (any hub)."""
    out = []
    for r in records:
        p = r.get("peers") or {}
        where = f"{p.get('scenario')} {p.get('hub')} rep {p.get('rep')}"
        if failed(r):
            out.append(
                f"{where} did not complete (result {r.get('result')}, run.sh exit {p.get('rc')})"
            )
        elif lost(r):
            out.append(f"{where} lost {lost(r):,} deliveries")
    return out


# ---------------------------------------------------------------- the table


def ratio_text(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f}{TIMES}"


def lost_text(figures: HubFigures) -> str:
    if figures.lost is None:
        return NONE
    if figures.lost == 0:
        return "0"
    pct = f" ({figures.loss_pct:.4f} %)" if figures.loss_pct is not None else ""
    return f"{figures.lost:,}{pct}"


def table(records: Sequence[dict[str, Any]]) -> str:
    """The markdown table (a row per scenario and hub, then the ratio rows), the targets
    and their verdicts, and footnotes for the marks used."""
    summary = summarize(records)
    by_pair = ratios(summary)
    head = ["scenario", "hub", "runs ok", *(h for _, h, _ in FIGURES), "lost (worst run)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    marks = ""
    for scenario, hubs in summary.items():
        for hub in [h for h in HUBS if h in hubs]:
            f = hubs[hub]
            marks += f.flags
            row = [
                scenario,
                NAMES.get(hub, hub),
                f"{f.ok}/{f.runs}{f.flags}",
                *(fmt(figure(f, key), 2) for key, _, _ in FIGURES),
                lost_text(f),
            ]
            lines.append("| " + " | ".join(row) + " |")
        for pair, by_figure in by_pair.get(scenario, {}).items():
            peer = pair.partition("/")[2]
            cells = [
                ratio_text(by_figure[key]) if key in RATIO_FIGURES else "" for key, _, _ in FIGURES
            ]
            lines.append(
                "| " + " | ".join([scenario, f"hubd / {SHORT[peer]}", "", *cells, ""]) + " |"
            )
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for v in verdicts(records):
        if v.target == ZERO_LOSS:
            measured = NONE if v.measured is None else f"{v.measured:,.0f} lost"
        else:
            measured = ratio_text(v.measured)
        shown = f"**{v.verdict}**" if v.verdict == NOT_MET else v.verdict
        lines.append(f"| {v.target} | {measured} | {shown} |")
    notes = [
        "Latency: publish POST sent -> WebSocket receipt, on the load generator's clock. "
        "Medians over the runs that completed; ratios are hubd's median over the peer's, "
        "measured in the same run (lower is better). A ratio target is met when the ratio, "
        "to two decimals, is at most the limit."
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(notes + footnotes(marks)) + "\n"


def medians_json(records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(records)
    return {
        **meta,
        "figures": {
            scenario: {hub: asdict(f) for hub, f in hubs.items()}
            for scenario, hubs in summary.items()
        },
        "ratios": ratios(summary),
        "targets": [asdict(v) for v in verdicts(records)],
        "problems": problems(records),
    }


# ---------------------------------------------------------------- running


def default_harness() -> Path:
    env = os.environ.get(HARNESS_ENV)
    return Path(env) if env else DEFAULT_HARNESS


def skip_reason(harness: Path) -> str | None:
    """Why the harness cannot run here, or None."""
    if not (harness / "run.sh").is_file():
        return f"no shared harness at {harness} (no run.sh; set ${HARNESS_ENV} or --harness)"
    node = os.environ.get("NODE", "node")
    if shutil.which(node) is None:
        return f"node ({node}) is not on the PATH: the harness' load generator and peer need it"
    if shutil.which("taskset") is None:
        return "taskset is not on the PATH: the harness pins the hub and the load generator"
    if not (ROOT / ".venv" / "bin" / "hubd").exists():
        return f"no {ROOT / '.venv' / 'bin' / 'hubd'} for bench/serve.sh (make run installs it)"
    return None


def progress(line: str) -> None:
    print(f"[peers] {line}", file=sys.stderr, flush=True)


def execute(run: Run, harness: Path, out: Path, tries: int, log: Any) -> dict[str, Any]:
    """One run (again while other processes disturb it); the record for runs.jsonl: its
    summary with a "peers" key."""
    args = ["--label", f"{run.hub}/{run.scenario}"]
    attempts = until_undisturbed(
        lambda: run_harness(harness, run.hub, run.scenario, args, out, log, {}, "peers", progress),
        tries,
        progress,
    )
    which = {"hub": run.hub, "scenario": run.scenario, "rep": run.rep}
    return harness_record(attempts, "peers", which)


def digest(record: dict[str, Any]) -> str:
    p = record["peers"]
    if record.get("result") == "no_summary":
        return f"no summary (run.sh exit {p['rc']}; see harness.log)"
    lat = "/".join(fmt(dig(record, path), 2) for _, _, path in FIGURES)
    parts = [f"p50/p99/p99.9 {lat} ms", f"lost {lost(record):,}"]
    if record.get("result") != "ok":
        parts.append(f"result {record.get('result')}")
    if p["contaminated"]:
        parts.append("DISTURBED")
    if dig(record, "loadgen.client_bound"):
        parts.append("load generator saturated")
    wait = f", {p['quiet_wait_s']:.0f} s waiting for quiet" if p["quiet_wait_s"] else ""
    return f"{', '.join(parts)} ({p['wall_s']:.0f} s{wait})"


def main(argv: list[str] | None = None, *, missing_ok: bool = False) -> int:
    """`missing_ok`: when the harness cannot run here, say why and return 0 (`python -m
    bench` runs this last); otherwise 2."""
    parser = argparse.ArgumentParser(
        prog="python -m bench peers",
        description="End-to-end latency against the Node ws and Python websockets peers "
        "(anchor, light) through the shared harness: one table, the targets met or not.",
    )
    parser.add_argument("--reps", type=int, default=3, help="runs of each hub (default 3)")
    parser.add_argument(
        "--scenarios",
        type=parse_list(SCENARIOS),
        default=list(SCENARIOS),
        help="default anchor,light",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for runs.jsonl, medians.json, table.md and run.sh's logs "
        "(default a new temporary directory, printed)",
    )
    parser.add_argument(
        "--harness",
        type=Path,
        default=None,
        help=f"the shared harness (default ${HARNESS_ENV}, else {DEFAULT_HARNESS})",
    )
    parser.add_argument(
        "--tries",
        type=int,
        default=3,
        help="runs per figure while other processes disturb them (run.sh exit 3; default 3)",
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    harness: Path = args.harness or default_harness()
    reason = skip_reason(harness)
    if reason is not None:
        print(f"peers: skipped: {reason}", flush=True)
        return 0 if missing_ok else 2

    runs = plan(args.scenarios, args.reps)
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="hubd-bench-peers-"))
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "reps": args.reps,
        "scenarios": list(args.scenarios),
    }
    progress(
        f"plan: {len(runs)} runs ({len(args.scenarios)} scenarios x {args.reps} "
        f"rep{'s' if args.reps > 1 else ''} x {len(HUBS)} hubs), about "
        f"{clock(estimate_seconds(runs))} on a quiet machine (run.sh waits up to "
        "QUIET_WAIT=300 s for quiet before each run)"
    )
    print(f"peers: results in {out} (commit {meta['commit']})", flush=True)

    previous = signal.signal(signal.SIGTERM, on_term)
    records: list[dict[str, Any]] = []
    t0 = time.monotonic()
    interrupted = False
    try:
        with (out / "harness.log").open("a") as log, (out / "runs.jsonl").open("a") as raw:
            for i, run in enumerate(runs, 1):
                progress(f"{i}/{len(runs)} {run.scenario} rep {run.rep}/{args.reps} {run.hub} ...")
                record = execute(run, harness, out, args.tries, log)
                records.append(record)
                raw.write(json.dumps(record) + "\n")
                raw.flush()
                progress(f"{i}/{len(runs)} {run.scenario} {run.hub}: {digest(record)}")
    except (KeyboardInterrupt, Interrupted):
        progress("interrupted: reporting the runs so far")
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)

    text = table(records) if records else "no runs\n"
    heading = (
        f"peers: hubd against Node ws and Python websockets, medians of {args.reps} "
        f"run{'s' if args.reps > 1 else ''} each ({meta['commit']}, {meta['date']})"
    )
    print(f"\n{heading}\n\n{text}", flush=True)
    (out / "table.md").write_text(f"{heading}\n\n{text}")
    (out / "medians.json").write_text(json.dumps(medians_json(records, meta), indent=2) + "\n")
    found = problems(records)
    for p in found:
        print(f"peers: FAILED: {p}", flush=True)
    print(
        f"peers: done in {clock(time.monotonic() - t0)}; raw runs {out / 'runs.jsonl'}, "
        f"medians {out / 'medians.json'}, run.sh log {out / 'harness.log'}",
        flush=True,
    )
    if interrupted:
        return 130
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
