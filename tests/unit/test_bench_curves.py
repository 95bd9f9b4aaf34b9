"""`python -m bench curves`: its pure parts (plan order, fan-out window, medians, the table).
Nothing here starts a process or needs matplotlib."""

from __future__ import annotations

from typing import Any

from bench.curves import (
    NONE,
    TIMES,
    Options,
    Run,
    combine,
    fanout_window,
    loadgen_args,
    plan,
    table,
)


def record(hub: str, size: int, scenario: str, rep: int = 1, **summary: Any) -> dict[str, Any]:
    curves = {"hub": hub, "size": size, "scenario": scenario, "rep": rep, "contaminated": False}
    return {"result": "ok", **summary, "curves": curves}


def idle(hub: str, size: int, kb: float, p99: float, rep: int = 1) -> dict[str, Any]:
    probe = {"p50": p99 / 2, "p99": p99, "max": p99 + 1}
    return record(
        hub,
        size,
        "idle",
        rep,
        idle={"rss_kb_per_conn": kb, "survived": size, "probe_received": size, "probe_ms": probe},
    )


def test_the_hubs_of_one_cell_run_back_to_back() -> None:
    runs = plan([1000, 5000], 2, ["idle", "connect"], ["hubd", "node-ws", "py-websockets"])
    assert len(runs) == 2 * 2 * 2 * 3
    assert runs[:4] == [
        Run(1000, 1, "idle", "hubd"),
        Run(1000, 1, "idle", "node-ws"),
        Run(1000, 1, "idle", "py-websockets"),
        Run(1000, 1, "connect", "hubd"),
    ]
    assert runs[12] == Run(5000, 1, "idle", "hubd")


def test_the_fanout_window_keeps_the_deliveries_in_flight() -> None:
    assert fanout_window(500) == (2000, 50)  # the harness' own fanout
    assert fanout_window(1000) == (1000, 50)
    assert fanout_window(10000) == (100, 50)
    assert fanout_window(20000) == (50, 25)  # the batch stays below the window
    args = loadgen_args(Run(20000, 1, "fanout", "hubd"), Options())
    assert args[args.index("--window") + 1] == "50"
    assert args[args.index("--batch") + 1] == "25"


def test_a_storm_opens_every_connection_at_once() -> None:
    args = loadgen_args(Run(10000, 1, "connect", "py-websockets"), Options(storm_timeout=90))
    assert args[args.index("--connect-rate") + 1] == "0"
    assert args[args.index("--connect-concurrency") + 1] == "10000"
    assert args[args.index("--connect-timeout") + 1] == "90"
    assert args[args.index("--subs") + 1] == "10000"


def test_combine_skips_missing_figures() -> None:
    assert combine([3.0, None, 1.0, 2.0], "median") == 2.0
    assert combine([3.0, 1.0], "median") == 2.0
    assert combine([3.0, None, 1.0], "max") == 3.0
    assert combine([None], "median") is None


def test_table_has_medians_and_same_run_ratios() -> None:
    records = [
        idle("hubd", 1000, 30.0, 10.0, rep=1),
        idle("hubd", 1000, 20.0, 30.0, rep=2),
        idle("hubd", 1000, 25.0, 20.0, rep=3),
        idle("py-websockets", 1000, 12.5, 40.0),
        idle("node-ws", 1000, 10.0, 10.0),
        record("hubd", 1000, "connect", connections={"seconds": 3.0, "failed": 2}),
        record("py-websockets", 1000, "connect", connections={"seconds": 2.0, "failed": 0}),
    ]
    records[3]["curves"]["contaminated"] = True
    lines = table(records).splitlines()
    assert lines[0].startswith("| N | figure | hubd | Node ws | Python websockets |")
    row = {line.split(" | ")[1]: line for line in lines if line.startswith("| 1,000 |")}
    # hubd's medians of 3 (25 KB, 20 ms) over the peers' single runs
    x = TIMES
    assert row["idle: KB per connection"].endswith(f"| 25.0 | 10.0 | 12.5† | 2.00{x} | 2.50{x} |")
    assert row["one event to all: p99 ms"].endswith(f"| 20.0 | 10.0 | 40.0† | 0.50{x} | 2.00{x} |")
    # counts: no ratio; the storm's failures are the worst run's
    assert "1,000 / 1,000" in row["idle: held to the end / reached by the one event"]
    storm = row["reconnect storm: s until all confirmed"]
    assert storm.endswith(f"| 3.00 | {NONE} | 2.00 | 1.50{x} | {NONE} |")
    assert row["reconnect storm: failures (worst run)"].endswith(f"| 2 | {NONE} | 0 |  |  |")
    assert "fan-out: deliveries/s" not in row  # no fanout runs: no row
    assert any(line.startswith("† other processes") for line in lines)
