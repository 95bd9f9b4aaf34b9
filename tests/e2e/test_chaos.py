"""The fault-injection run (`python -m bench.chaos`, `make chaos`) for 20 seconds with exactly
one node kill: a 3-node cluster on a real redis-server, publishers and subscribers through
the harness' relays. The checker must find no silent loss, events must have been delivered
(after the kill too), and the kill must have happened. Nothing here depends on timing: the
run's own bounds only guard against a hang."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.checker import Received, Subscribed, check, load_jsonl

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# A hang guard only: the run itself is bounded (20 s, recoveries, a 30 s drain).
HANG_GUARD = 600.0


def test_one_node_kill_loses_nothing_silently(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail(
            "redis-server is not installed; install it (apt-get install -y redis-server, "
            "as .ci/run does) to run the backplane tests"
        )
    run_dir = tmp_path / "run"
    out = tmp_path / "records.jsonl"
    argv = [
        sys.executable, "-m", "bench.chaos",
        "--seconds", "20",
        "--faults", "kill",
        "--max-faults", "1",
        "--seed", "7",
        "--run-dir", str(run_dir),
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["fault_counts"] == {"kill": 1, "stop": 0, "redis": 0, "slow": 0, "storm": 0}
    (kill,) = summary["faults"]
    assert kill["kind"] == "kill"
    assert "ready after" in kill["detail"], kill
    assert summary["subscription_failures"] == [], output

    records = load_jsonl(out)
    report = check(records)
    assert report.ok, report.table()
    assert not report.silent, report.table()

    subscribers = {r.subscriber for r in records if isinstance(r, Subscribed)}
    received = [r for r in records if isinstance(r, Received)]
    assert len(subscribers) == 12
    assert {r.subscriber for r in received} == subscribers
    # Delivered after the killed node was back too, not only before the fault.
    assert any(r.at > kill["end"] for r in received)
