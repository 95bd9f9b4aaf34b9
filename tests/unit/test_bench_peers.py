"""`python -m bench peers`: its pure parts (plan order, medians, ratios, the targets' verdicts,
the table, what fails the run). Nothing here starts a process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.curves import NONE, TIMES
from bench.peers import (
    MET,
    NO_FIGURE,
    NOT_MET,
    NOT_RUN,
    Run,
    loss_verdict,
    plan,
    problems,
    skip_reason,
    summarize,
    table,
    verdicts,
)


def record(
    hub: str,
    scenario: str,
    p50: float,
    p99: float,
    *,
    rep: int = 1,
    lost: int = 0,
    result: str = "ok",
    rc: int = 0,
) -> dict[str, Any]:
    latency = {"p50": p50, "p90": p50 * 2, "p99": p99, "p999": p99 * 2, "max": p99 * 3}
    expected = 40_000
    delivery = {"expected": expected, "lost": lost, "loss_pct": round(100 * lost / expected, 4)}
    peers = {"hub": hub, "scenario": scenario, "rep": rep, "rc": rc, "contaminated": False}
    return {"result": result, "latency_ms": latency, "delivery": delivery, "peers": peers}


def three(
    scenario: str, hubd: tuple[float, float], py: tuple[float, float]
) -> list[dict[str, Any]]:
    """One repetition: hubd, Node (always 2 / 10 ms), Python."""
    return [
        record("hubd", scenario, *hubd),
        record("node-ws", scenario, 2.0, 10.0),
        record("py-websockets", scenario, *py),
    ]


def by_target(records: list[dict[str, Any]]) -> dict[str, tuple[float | None, str]]:
    return {v.target: (v.measured, v.verdict) for v in verdicts(records)}


def test_the_hubs_of_one_repetition_run_back_to_back() -> None:
    runs = plan(["anchor", "light"], 2)
    assert len(runs) == 2 * 2 * 3
    assert runs[:4] == [
        Run("anchor", 1, "hubd"),
        Run("anchor", 1, "node-ws"),
        Run("anchor", 1, "py-websockets"),
        Run("anchor", 2, "hubd"),
    ]
    assert runs[6] == Run("light", 1, "hubd")


def test_medians_over_the_reps_and_the_worst_runs_loss() -> None:
    records = [
        record("hubd", "anchor", 1.0, 30.0, rep=1),
        record("hubd", "anchor", 3.0, 10.0, rep=2, lost=7),
        record("hubd", "anchor", 2.0, 20.0, rep=3),
    ]
    f = summarize(records)["anchor"]["hubd"]
    assert (f.p50, f.p99, f.p999) == (2.0, 20.0, 40.0)
    assert (f.runs, f.ok, f.lost, f.loss_pct) == (3, 3, 7, 0.0175)


def test_a_failed_run_gives_no_figure_and_fails_the_command() -> None:
    records = [
        record("hubd", "light", 1.0, 5.0),
        record("hubd", "light", 9.0, 90.0, rep=2, result="timeout", rc=3),
    ]
    f = summarize(records)["light"]["hubd"]
    assert (f.p50, f.ok, f.runs) == (1.0, 1, 2)
    assert "\u203c" in f.flags
    assert problems(records) == [
        "light hubd rep 2 did not complete (result timeout, run.sh exit 3)"
    ]
    # No summary at all (run.sh failed before the load generator printed one).
    peers = {"hub": "node-ws", "scenario": "light", "rep": 1, "rc": 1}
    assert problems([{"result": "no_summary", "peers": peers}]) == [
        "light node-ws rep 1 did not complete (result no_summary, run.sh exit 1)"
    ]


def test_a_disturbed_run_is_not_a_failure_but_loss_is_whoever_loses() -> None:
    disturbed = record("hubd", "anchor", 1.0, 5.0, rc=3)
    disturbed["peers"]["contaminated"] = True
    assert problems([disturbed]) == []
    assert "\u2020" in summarize([disturbed])["anchor"]["hubd"].flags
    lossy_peer = record("py-websockets", "anchor", 1.0, 5.0, lost=3)
    assert problems([lossy_peer]) == ["anchor py-websockets rep 1 lost 3 deliveries"]


def test_targets_against_python() -> None:
    records = [
        *three("anchor", hubd=(1.1, 9.0), py=(1.0, 10.0)),  # p50 1.10x (met: <= 1.1), p99 0.9x
        *three("light", hubd=(1.0, 5.1), py=(1.0, 5.0)),  # p99 1.02x: not met
    ]
    got = by_target(records)
    assert got[f"anchor p99 \u2264 1.00{TIMES} Python"] == (0.9, MET)
    measured, verdict = got[f"anchor p50 \u2264 1.10{TIMES} Python"]
    assert verdict == MET and measured is not None and abs(measured - 1.1) < 1e-9
    measured, verdict = got[f"light p99 \u2264 1.00{TIMES} Python"]
    assert verdict == NOT_MET and measured is not None and abs(measured - 1.02) < 1e-9
    assert got["zero loss (hubd, every run)"] == (0, MET)


def test_a_ratio_is_judged_as_printed_to_two_decimals() -> None:
    records = three("light", hubd=(1.0, 5.02), py=(1.0, 5.0))  # 1.004x, printed 1.00x
    assert by_target(records)[f"light p99 \u2264 1.00{TIMES} Python"][1] == MET


def test_targets_of_a_scenario_not_run_or_without_figures() -> None:
    records = three("light", hubd=(1.0, 4.0), py=(1.0, 5.0))
    got = by_target(records)
    assert got[f"anchor p99 \u2264 1.00{TIMES} Python"] == (None, NOT_RUN)
    broken = [record("hubd", "light", 1.0, 4.0), record("py-websockets", "light", 1.0, 5.0)]
    broken[1]["result"] = "fatal"
    assert by_target(broken)[f"light p99 \u2264 1.00{TIMES} Python"] == (None, NO_FIGURE)
    assert loss_verdict([]).verdict == NOT_RUN


def test_zero_loss_counts_every_hubd_run_and_no_peer() -> None:
    records = [
        record("hubd", "anchor", 1.0, 5.0, lost=2),
        record("hubd", "light", 1.0, 5.0, lost=1),
        record("py-websockets", "light", 1.0, 5.0, lost=50),
    ]
    v = loss_verdict(records)
    assert (v.measured, v.verdict) == (3, NOT_MET)


def test_the_table() -> None:
    records = [
        *three("anchor", hubd=(4.0, 60.0), py=(5.0, 50.0)),
        *three("light", hubd=(1.5, 4.0), py=(1.5, 5.0)),
    ]
    records[0]["delivery"].update(lost=4, loss_pct=0.01)
    text = table(records)
    lines = text.splitlines()
    assert lines[0] == (
        "| scenario | hub | runs ok | p50 ms | p99 ms | p99.9 ms | lost (worst run) |"
    )
    assert "| anchor | hubd | 1/1 | 4.00 | 60.00 | 120.00 | 4 (0.0100 %) |" in lines
    assert "| anchor | Python websockets | 1/1 | 5.00 | 50.00 | 100.00 | 0 |" in lines
    assert f"| anchor | hubd / Python |  | 0.80{TIMES} | 1.20{TIMES} |  |  |" in lines
    assert f"| anchor | hubd / Node |  | 2.00{TIMES} | 6.00{TIMES} |  |  |" in lines
    assert f"| light | hubd / Python |  | 1.00{TIMES} | 0.80{TIMES} |  |  |" in lines
    assert f"| anchor p99 \u2264 1.00{TIMES} Python | 1.20{TIMES} | **NOT met** |" in lines
    assert f"| anchor p50 \u2264 1.10{TIMES} Python | 0.80{TIMES} | met |" in lines
    assert f"| light p99 \u2264 1.00{TIMES} Python | 0.80{TIMES} | met |" in lines
    assert "| zero loss (hubd, every run) | 4 lost | **NOT met** |" in lines
    # Rows follow the order the hubs ran in, scenario by scenario.
    hubs = [line.split(" | ")[1] for line in lines if line.startswith("| anchor |")]
    assert hubs == ["hubd", "Node ws", "Python websockets", "hubd / Python", "hubd / Node"]


def test_the_table_without_a_peer_leaves_its_cells_empty() -> None:
    text = table([record("hubd", "light", 1.0, 4.0)])
    assert "hubd / Python" not in text
    assert f"| light p99 \u2264 1.00{TIMES} Python | {NONE} | {NOT_RUN} |" in text


def test_no_harness_is_a_reason_to_skip(tmp_path: Path) -> None:
    reason = skip_reason(tmp_path)
    assert reason is not None and str(tmp_path) in reason and "run.sh" in reason
