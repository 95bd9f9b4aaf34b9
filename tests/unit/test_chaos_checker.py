"""The chaos run's event-by-event checker (bench/checker.py): what counts as expected,
what a loss signal covers, what is silent, the table, the JSONL files and the CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Literal

import pytest

from bench.checker import (
    Ended,
    Flagged,
    Published,
    Received,
    Record,
    Report,
    Subscribed,
    check,
    dump_jsonl,
    load_jsonl,
    main,
)

Outcome = Literal["accepted", "refused", "unknown"]


class Run:
    """Builds a run's records on one clock that advances by 1 at every record."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.published: dict[tuple[str, int], Published] = {}
        self.now = 0.0

    def _tick(self) -> float:
        self.now += 1.0
        return self.now

    def sub(self, name: str, *channels: str) -> None:
        self.records.append(Subscribed(name, channels or ("a",), self._tick()))

    def pub(
        self, publisher: str, seq: int, channel: str = "a", outcome: Outcome = "accepted"
    ) -> Published:
        sent = self._tick()
        status = {"accepted": 202, "refused": 503, "unknown": None}[outcome]
        event_id = f"id-{publisher}-{seq}" if outcome == "accepted" else None
        p = Published(publisher, seq, channel, outcome, status, event_id, sent, sent + 0.5)
        self.records.append(p)
        self.published[(publisher, seq)] = p
        return p

    def pubs(self, publisher: str, seqs: range, channel: str = "a") -> None:
        for seq in seqs:
            self.pub(publisher, seq, channel)

    def recv(self, name: str, publisher: str, *seqs: int) -> None:
        for seq in seqs:
            p = self.published.get((publisher, seq))
            channel = p.channel if p is not None else "a"
            event_id = f"id-{publisher}-{seq}"
            self.records.append(Received(name, publisher, seq, channel, event_id, self._tick()))

    def flag(
        self, name: str, reason: str = "history_incomplete", dropped: int | None = None
    ) -> None:
        self.records.append(Flagged(name, reason, self._tick(), dropped))

    def end(self, name: str) -> None:
        self.records.append(Ended(name, self._tick()))

    def check(self, flag_window: int = 4096) -> Report:
        return check(self.records, flag_window=flag_window)


def row(report: Report, name: str = "s1") -> dict[str, object]:
    return next(r.to_json() for r in report.subscribers if r.subscriber == name)


def lost_seqs(report: Report, name: str = "s1") -> list[tuple[str, int]]:
    (r,) = [r for r in report.subscribers if r.subscriber == name]
    return [(s.publisher, s.seq) for s in r.samples if s.kind == "lost"]


def test_clean_run_everything_delivered_once_in_order() -> None:
    run = Run()
    run.sub("s1")
    run.sub("s2")
    run.pubs("p1", range(1, 11))
    run.recv("s1", "p1", *range(1, 11))
    run.recv("s2", "p1", *range(1, 11))
    run.end("s1")
    run.end("s2")
    report = run.check()
    t = report.totals
    assert report.ok and report.silent == 0
    assert (t.published, t.accepted, t.expected, t.delivered_in_order) == (10, 10, 20, 20)
    assert t.covered == t.silently_lost == t.delivered_after_gap == t.extra == 0
    assert [r.subscriber for r in report.subscribers] == ["s1", "s2"]


def test_hole_without_flag_is_silently_lost() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 6))
    run.recv("s1", "p1", 1, 2, 5)
    run.end("s1")
    report = run.check()
    assert not report.ok
    assert report.totals.silently_lost == 2
    assert report.totals.delivered_in_order == 3
    assert report.totals.covered == 0
    assert lost_seqs(report) == [("p1", 3), ("p1", 4)]


def test_hole_with_flag_before_next_event_is_covered_and_next_delivered_after_gap() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 6))
    run.recv("s1", "p1", 1, 2)
    run.flag("s1", "history_incomplete")
    run.recv("s1", "p1", 5)
    run.end("s1")
    report = run.check()
    assert report.ok
    t = report.totals
    assert (t.covered, t.delivered_after_gap, t.delivered_in_order) == (2, 1, 2)
    assert t.gaps == {"history_incomplete": 1}


def test_flag_before_previous_receipt_does_not_cover_a_later_hole() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 5))
    run.flag("s1")  # about something before event 1, not about the hole 2..3
    run.recv("s1", "p1", 1, 4)
    run.end("s1")
    report = run.check()
    assert report.totals.silently_lost == 2
    assert not report.ok


def test_flag_within_window_after_the_next_events_covers_the_hole() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 10))
    run.recv("s1", "p1", 1, 4, 5, 6)  # 2 and 3 dropped by the server
    run.flag("s1", "dropped_by_server", dropped=2)  # 3 observations after event 4
    run.recv("s1", "p1", 7, 8, 9)
    run.end("s1")
    assert run.check(flag_window=3).ok
    report = run.check(flag_window=3)
    assert (report.totals.covered, report.totals.delivered_after_gap) == (2, 1)
    assert report.totals.dropped == 2
    # One observation short: the same signal no longer covers the hole.
    late = run.check(flag_window=2)
    assert not late.ok
    assert late.totals.silently_lost == 2
    assert lost_seqs(late) == [("p1", 2), ("p1", 3)]


def test_default_window_is_4096_observations() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 5000))
    run.recv("s1", "p1", 1, *range(3, 4099))  # 2 missing; 4096 events follow event 3
    run.flag("s1", "dropped_by_server", dropped=1)
    run.recv("s1", "p1", *range(4099, 5000))
    assert run.check().totals.covered == 1
    assert run.check(flag_window=4095).totals.silently_lost == 1


def test_tail_loss_without_a_flag_is_silent() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 6))
    run.recv("s1", "p1", 1, 2, 3)
    run.end("s1")
    report = run.check()
    assert report.totals.silently_lost == 2
    assert lost_seqs(report) == [("p1", 4), ("p1", 5)]
    assert not report.ok


def test_tail_loss_with_a_trailing_flag_is_covered() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 6))
    run.recv("s1", "p1", 1, 2, 3)
    run.flag("s1", "no_resume_point")
    run.end("s1")
    report = run.check()
    assert report.ok
    assert report.totals.covered == 2
    assert report.totals.gaps == {"no_resume_point": 1}


def test_tail_loss_of_a_publisher_never_received_needs_a_flag_after_subscribed() -> None:
    run = Run()
    run.flag("s1")  # before the subscription: covers nothing
    run.sub("s1")
    run.pubs("p1", range(1, 3))
    run.end("s1")
    assert run.check().totals.silently_lost == 2
    run.flag("s1")
    assert run.check().totals.covered == 2


def test_duplicate_is_silent_and_counted_per_extra_receipt() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 4))
    run.recv("s1", "p1", 1, 2, 2, 3, 2)
    report = run.check()
    assert report.totals.duplicated == 2
    assert report.totals.delivered_in_order == 3
    assert report.silent == 2 and not report.ok
    assert row(report)["duplicated"] == 2


def test_out_of_order_is_silent_and_the_late_event_is_not_also_lost() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 5))
    run.recv("s1", "p1", 1, 3, 2, 4)
    report = run.check()
    t = report.totals
    assert t.out_of_order == 1
    assert t.silently_lost == 0 and t.covered == 0
    assert t.delivered_in_order == 3
    assert not report.ok
    # Every expected delivery ends in exactly one category.
    assert t.expected == t.delivered_in_order + t.delivered_after_gap + t.covered + 1


def test_refused_but_delivered_is_silent() -> None:
    run = Run()
    run.sub("s1")
    run.pub("p1", 1)
    run.pub("p1", 2, outcome="refused")
    run.pub("p1", 3)
    run.recv("s1", "p1", 1, 2, 3)
    report = run.check()
    t = report.totals
    assert (t.refused, t.refused_but_delivered, t.delivered_in_order) == (1, 1, 2)
    assert t.expected == 2
    assert not report.ok
    assert "refused-but-delivered" in report.table()


def test_refused_and_not_delivered_is_fine() -> None:
    run = Run()
    run.sub("s1")
    run.pub("p1", 1)
    run.pub("p1", 2, outcome="refused")
    run.pub("p1", 3)
    run.recv("s1", "p1", 1, 3)
    report = run.check()
    assert report.ok
    assert report.totals.silently_lost == 0


def test_unknown_outcomes_delivered_not_delivered_and_partially() -> None:
    run = Run()
    for name in ("s1", "s2", "s3"):
        run.sub(name)
    run.pub("p1", 1)
    run.pub("p1", 2, outcome="unknown")  # reaches everyone
    run.pub("p1", 3, outcome="unknown")  # reaches no one
    run.pub("p1", 4, outcome="unknown")  # reaches s1 only
    run.pub("p1", 5)
    run.recv("s1", "p1", 1, 2, 4, 5)
    run.recv("s2", "p1", 1, 2, 5)
    run.recv("s3", "p1", 1, 2, 5)
    report = run.check()
    t = report.totals
    assert report.ok  # unknown outcomes are never a failure
    assert t.unknown == 3
    assert (t.unknown_delivered, t.unknown_not_delivered, t.unknown_partial) == (2, 1, 1)
    assert t.unknown_outcome_received == 4
    assert t.expected == t.delivered_in_order == 6
    table = report.table()
    assert "unknown-outcome delivered/not" in table
    assert "to some but not all" in table


def test_a_late_unknown_outcome_event_is_not_out_of_order() -> None:
    # A stopped node carries out a publish the publisher gave up on (timeout) seconds
    # later, after the publisher's next events went through another node.
    run = Run()
    run.sub("s1")
    run.pub("p1", 1)
    run.pub("p1", 2, outcome="unknown")
    run.pub("p1", 3)
    run.pub("p1", 4)
    run.recv("s1", "p1", 1, 3, 2, 4)
    report = run.check()
    t = report.totals
    assert report.ok
    assert t.out_of_order == 0
    assert t.unknown_outcome_received == 1
    assert t.delivered_in_order == 3


def test_an_unknown_outcome_event_does_not_hide_a_hole() -> None:
    run = Run()
    run.sub("s1")
    run.pub("p1", 1)
    run.pub("p1", 2)
    run.pub("p1", 3, outcome="unknown")
    run.pub("p1", 4)
    run.recv("s1", "p1", 1, 3, 4)
    t = run.check().totals
    assert t.silently_lost == 1


def test_unknown_outcome_partial_only_counts_subscribers_that_would_expect_it() -> None:
    run = Run()
    run.sub("s1", "a")
    run.sub("s2", "b")  # never subscribed to `a`: not missing anything
    run.pub("p1", 1, "a", outcome="unknown")
    run.recv("s1", "p1", 1)
    t = run.check().totals
    assert (t.unknown_delivered, t.unknown_partial) == (1, 0)


def test_publishes_before_subscribed_and_after_ended_are_not_expected() -> None:
    run = Run()
    run.pub("p1", 1)  # before s1 subscribed
    run.sub("s1")
    run.pub("p1", 2)
    run.pub("p1", 3)
    run.recv("s1", "p1", 1, 2, 3)
    run.end("s1")
    run.pub("p1", 4)  # after s1 ended
    report = run.check()
    t = report.totals
    assert t.expected == 2
    assert t.extra == 1  # event 1: informational
    assert t.silently_lost == 0
    assert report.ok
    assert row(report)["ended_at"] is not None


def test_publish_answered_after_ended_is_not_expected_even_if_sent_before() -> None:
    run = Run()
    run.sub("s1")
    run.records.append(Published("p1", 1, "a", "accepted", 202, "id-p1-1", 2.0, 10.0))
    run.records.append(Ended("s1", 5.0))
    report = run.check()
    assert report.totals.expected == 0
    assert report.ok


def test_only_subscribed_channels_are_expected() -> None:
    run = Run()
    run.sub("s1", "a", "global")
    run.sub("s2", "b", "global")
    run.pub("p1", 1, "a")
    run.pub("p1", 2, "b")
    run.pub("p1", 3, "global")
    run.pub("p1", 4, "a")
    run.recv("s1", "p1", 1, 3, 4)
    run.recv("s2", "p1", 2, 3)
    report = run.check()
    assert report.ok
    assert row(report, "s1")["expected"] == 3
    assert row(report, "s2")["expected"] == 2
    assert report.totals.expected == report.totals.delivered_in_order == 5


def test_channel_filtering_still_finds_a_hole_across_channels() -> None:
    run = Run()
    run.sub("s1", "a", "b")
    run.pub("p1", 1, "a")
    run.pub("p1", 2, "c")  # not subscribed: not a hole
    run.pub("p1", 3, "b")  # lost
    run.pub("p1", 4, "a")
    run.recv("s1", "p1", 1, 4)
    report = run.check()
    assert report.totals.silently_lost == 1
    assert lost_seqs(report) == [("p1", 3)]


def test_event_on_an_unsubscribed_channel_is_extra_not_an_error() -> None:
    run = Run()
    run.sub("s1", "a")
    run.pub("p1", 1, "a")
    run.pub("p1", 2, "b")
    run.recv("s1", "p1", 1, 2)
    report = run.check()
    assert report.ok
    assert (report.totals.extra, report.totals.delivered_in_order) == (1, 1)


def test_received_without_published_is_silent() -> None:
    run = Run()
    run.sub("s1")
    run.pub("p1", 1)
    run.recv("s1", "p1", 1)
    run.recv("s1", "ghost", 7)
    report = run.check()
    assert report.totals.unknown_events == 1
    assert report.silent == 1 and not report.ok
    (r,) = report.subscribers
    assert [(s.kind, s.publisher, s.seq) for s in r.samples] == [("unknown_event", "ghost", 7)]


def test_received_with_another_event_id_is_mismatched() -> None:
    run = Run()
    run.sub("s1")
    run.pub("p1", 1)
    run.records.append(Received("s1", "p1", 1, "a", "some-other-id", 99.0))
    report = run.check()
    assert report.totals.mismatched == 1
    assert report.totals.delivered_in_order == 1
    assert not report.ok


def test_multiple_publishers_interleaved_holes_are_per_publisher() -> None:
    run = Run()
    run.sub("s1", "a", "b")
    for seq in range(1, 6):
        run.pub("p1", seq, "a")
        run.pub("p2", seq, "b")
    run.recv("s1", "p1", 1)
    run.recv("s1", "p2", 1)
    run.recv("s1", "p1", 2)
    run.flag("s1")  # after p2's last receipt (1) and p1's (2)
    run.recv("s1", "p2", 4)  # p2's 2, 3: covered
    run.recv("s1", "p1", 3)
    run.recv("s1", "p2", 5)
    run.recv("s1", "p1", 5)  # p1's 4: the flag came before p1's 3 was received: lost
    report = run.check(flag_window=0)
    t = report.totals
    assert t.covered == 2
    assert t.silently_lost == 1
    assert lost_seqs(report) == [("p1", 4)]
    assert t.delivered_after_gap == 1
    assert t.delivered_in_order == 6
    assert t.expected == 10


def test_subscriber_without_subscribed_expects_nothing() -> None:
    run = Run()
    run.pub("p1", 1)
    run.recv("s1", "p1", 1)
    report = run.check()
    assert report.ok
    assert (report.totals.expected, report.totals.extra) == (0, 1)
    assert row(report)["channels"] is None


def test_two_published_records_for_one_seq_are_rejected() -> None:
    run = Run()
    run.pub("p1", 1)
    run.pub("p1", 1)
    with pytest.raises(ValueError, match="p1#1"):
        run.check()
    with pytest.raises(ValueError):
        check([], flag_window=-1)


def test_table_shows_the_key_lines_and_the_verdict() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 4))
    run.recv("s1", "p1", 1, 2, 3)
    run.end("s1")
    ok_table = run.check().table()
    assert ok_table.splitlines()[0].startswith("chaos check: OK")
    for label in (
        "events published",
        "expected deliveries",
        "delivered once in order",
        "delivered after a flagged gap",
        "covered by a loss signal",
        "SILENTLY LOST",
        "DUPLICATED",
        "OUT OF ORDER",
        "refused-but-delivered",
        "unknown-outcome delivered/not",
        "gaps seen",
    ):
        assert label in ok_table
    assert "worst subscribers" not in ok_table


def test_failed_table_names_the_worst_subscribers_and_their_first_losses() -> None:
    run = Run()
    run.sub("s1")
    run.sub("s2")
    run.sub("s3")
    run.pubs("p1", range(1, 11))
    run.recv("s1", "p1", 1, 10)  # 8 lost
    run.recv("s2", "p1", 1, 2, 3, 4, 5, 6, 7, 8, 10)  # 1 lost
    run.recv("s3", "p1", *range(1, 11))
    run.flag("s3", "dropped_by_server", dropped=3)
    table = run.check().table()
    lines = table.splitlines()
    assert lines[0] == "chaos check: FAILED (9 silent problem(s))"
    assert any(line.split()[:3] == ["SILENTLY", "LOST", "9"] for line in lines)
    assert "dropped_by_server 1  (3 frames dropped)" in table
    worst = table[table.index("worst subscribers") :]
    assert worst.index("s1: silent 8") < worst.index("s2: silent 1")
    assert "s3:" not in worst
    assert "lost                  p1#2 on a id=id-p1-2" in worst
    assert "p1#9 on a id=id-p1-9" in worst  # s2's only loss
    assert "p1#7" not in worst  # s1 shows its first five only


def test_to_json_is_plain_data() -> None:
    run = Run()
    run.sub("s1")
    run.pubs("p1", range(1, 4))
    run.recv("s1", "p1", 1, 3)
    data = run.check().to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["ok"] is False and data["silent"] == 1
    assert data["totals"]["silently_lost"] == 1
    assert data["subscribers"][0]["samples"][0]["seq"] == 2


def test_jsonl_round_trip(tmp_path: Path) -> None:
    run = Run()
    run.sub("s1", "a", "global")
    run.pub("p1", 1)
    run.pub("p1", 2, outcome="unknown")
    run.pub("p1", 3, outcome="refused")
    run.recv("s1", "p1", 1)
    run.flag("s1", "dropped_by_server", dropped=5)
    run.flag("s1", "no_resume_point")
    run.end("s1")
    path = tmp_path / "records.jsonl"
    dump_jsonl(run.records, path)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == [
        "subscribed",
        "published",
        "published",
        "published",
        "received",
        "flagged",
        "flagged",
        "ended",
    ]
    back = load_jsonl(path)
    assert back == run.records
    assert isinstance(back[0], Subscribed) and back[0].channels == ("a", "global")
    assert check(back).to_json() == run.check().to_json()


def test_load_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"kind": "ended", "subscriber": "s1", "at": 1.0}\n\n{"kind": "nope"}\n')
    with pytest.raises(ValueError, match=r"records.jsonl:3: unknown kind 'nope'"):
        load_jsonl(path)
    path.write_text('{"kind": "ended", "subscriber": "s1", "at": "soon"}\n')
    with pytest.raises(ValueError, match=r":1: "):
        load_jsonl(path)


def test_cli_exit_code_follows_the_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = Run(), Run()
    for run in (good, bad):
        run.sub("s1")
        run.pubs("p1", range(1, 4))
    good.recv("s1", "p1", 1, 2, 3)
    bad.recv("s1", "p1", 1, 3)
    dump_jsonl(good.records, tmp_path / "good.jsonl")
    dump_jsonl(bad.records, tmp_path / "bad.jsonl")

    assert main([str(tmp_path / "good.jsonl")]) == 0
    assert "chaos check: OK" in capsys.readouterr().out

    out_json = tmp_path / "report.json"
    assert main([str(tmp_path / "bad.jsonl"), "--json", str(out_json)]) == 1
    assert "chaos check: FAILED" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["totals"]["silently_lost"] == 1

    # A wider window changes nothing for a loss no signal covers.
    assert main([str(tmp_path / "bad.jsonl"), "--flag-window", "0"]) == 1
    capsys.readouterr()
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "error:" in capsys.readouterr().err


# -- against a direct transcription of the rules, on random runs ---------------------------


def reference(records: list[Record], flag_window: int) -> dict[str, int]:
    """The rules of bench/checker.py's docstring, written the slow and obvious way."""
    published = {(r.publisher, r.seq): r for r in records if isinstance(r, Published)}
    streams: dict[str, list[Record]] = {}
    for r in records:
        if not isinstance(r, Published):
            streams.setdefault(r.subscriber, []).append(r)
    out = dict.fromkeys(
        [
            "expected",
            "in_order",
            "after_gap",
            "covered",
            "lost",
            "dup",
            "ooo",
            "refused",
            "unknown_event",
        ],
        0,
    )
    for stream in streams.values():
        subs = [(i, r) for i, r in enumerate(stream) if isinstance(r, Subscribed)]
        ends = [r for r in stream if isinstance(r, Ended)]
        flags = [i for i, r in enumerate(stream) if isinstance(r, Flagged)]
        sub_pos, sub = subs[0] if subs else (-1, None)
        end = ends[0].at if ends else math.inf
        expected = {
            k
            for k, p in published.items()
            if sub is not None
            and p.outcome == "accepted"
            and p.channel in sub.channels
            and p.sent_at >= sub.at
            and p.answered_at <= end
        }
        out["expected"] += len(expected)
        seen: set[tuple[str, int]] = set()
        highest: dict[str, tuple[int, int]] = {}  # publisher -> (seq, position)
        holes: dict[tuple[str, int], bool] = {}
        for i, r in enumerate(stream):
            if not isinstance(r, Received):
                continue
            key = (r.publisher, r.seq)
            if key not in published:
                out["unknown_event"] += 1
                continue
            if key in seen:
                out["dup"] += 1
                continue
            seen.add(key)
            if published[key].outcome == "unknown":
                continue  # takes no part in ordering
            top, anchor = highest.get(r.publisher, (-1, sub_pos))
            if r.seq < top:
                out["refused" if published[key].outcome == "refused" else "ooo"] += 1
                continue
            gap = [k for k in expected if k[0] == r.publisher and top < k[1] < r.seq]
            covered = any(anchor < f <= i + flag_window for f in flags)
            holes.update(dict.fromkeys(gap, covered))
            highest[r.publisher] = (r.seq, i)
            if published[key].outcome == "refused":
                out["refused"] += 1
            elif key in expected:
                out["after_gap" if gap and covered else "in_order"] += 1
        for k in expected:
            top, anchor = highest.get(k[0], (-1, sub_pos))
            if k[1] > top:
                holes[k] = any(f > anchor for f in flags)
        for k, covered in holes.items():
            if k not in seen:
                out["covered" if covered else "lost"] += 1
    return out


def random_run(rng: random.Random) -> list[Record]:
    run = Run()
    names = [f"s{i}" for i in range(rng.randint(1, 4))]
    chans = ["a", "b", "c"]
    pending: list[tuple[str, str, int]] = []
    started: set[str] = set()
    for step in range(rng.randint(5, 60)):
        for name in names:
            if name not in started and rng.random() < 0.3:
                run.sub(name, *rng.sample(chans, rng.randint(1, 3)))
                started.add(name)
        publisher = rng.choice(["p1", "p2"])
        outcome: Outcome = rng.choice(["accepted"] * 6 + ["refused", "unknown"])
        p = run.pub(publisher, step, rng.choice(chans), outcome)
        for name in names:
            if rng.random() < 0.85:
                pending.append((name, p.publisher, p.seq))
        while pending and rng.random() < 0.6:
            name, publisher, seq = pending.pop(rng.randrange(min(2, len(pending))))
            run.recv(name, publisher, seq)
            if rng.random() < 0.05:
                run.recv(name, publisher, seq)
            if rng.random() < 0.1:
                run.flag(name, "dropped_by_server")
    for name, publisher, seq in pending:
        run.recv(name, publisher, seq)
    if rng.random() < 0.3:
        run.recv(names[0], "ghost", 1)
    for name in names:
        if rng.random() < 0.2:
            run.flag(name)
        run.end(name)
    return run.records


def test_matches_the_rules_written_out_on_random_runs() -> None:
    rng = random.Random(20240611)
    failing = 0
    for _ in range(300):
        records = random_run(rng)
        window = rng.choice([0, 1, 3, 4096])
        t = check(records, flag_window=window).totals
        want = reference(records, window)
        got = {
            "expected": t.expected,
            "in_order": t.delivered_in_order,
            "after_gap": t.delivered_after_gap,
            "covered": t.covered,
            "lost": t.silently_lost,
            "dup": t.duplicated,
            "ooo": t.out_of_order,
            "refused": t.refused_but_delivered,
            "unknown_event": t.unknown_events,
        }
        assert got == want
        failing += t.silent > 0
    assert 0 < failing < 300  # the generator produces both verdicts
