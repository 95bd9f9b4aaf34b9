"""Event-by-event check of a fault-injection run: was anything lost without being said?

A run is a list of records (`Published`, `Subscribed`, `Received`, `Flagged`, `Ended`)
taken on one monotonic clock; `check()` turns it into a `Report`. The records of one
subscriber must appear in the order that subscriber observed them; records of different
subscribers and publishers may be interleaved in any way. "Position" below is the index
of a record among its subscriber's own records.

What is expected. Subscriber S expects every publish that was `accepted` (answered 202)
on a channel in S's first confirmed subscription, sent at or after S's `Subscribed.at`
and answered at or before S's `Ended.at` (no `Ended`: no upper bound). A subscriber
without a `Subscribed` record expects nothing. A publisher publishes one event at a time,
so its `seq` order is its publish order, and hubd preserves each publisher's order
across channels: S must receive each publisher's expected events in increasing `seq`.

Walking S's records in order, each `Received` of publisher P's event `seq` is one of
(first match wins; each receipt counts in exactly one of these):

- unknown event: no `Published` has this (P, seq): something was invented. Silent.
- DUPLICATED: (P, seq) was already received by S. Silent (counts each extra receipt).
- refused-but-delivered: the publish was answered `refused` (4xx/503, or never sent)
  yet S got it: the publisher was told a lie. Silent.
- OUT OF ORDER: seq is below the highest seq S has received from P. Silent. If the event
  was expected it was counted as a hole when the higher seq arrived; it now leaves the
  hole, so a late event is never counted as lost as well.
- unknown-outcome delivered: the publish's outcome is `unknown` (504, reset after
  sending, timeout): it may or may not have been published, so receiving it is fine,
  at any point: the publisher went on without an answer (a stopped node may carry the
  request out seconds later), and hubd orders a publisher's events only when each was
  answered before the next was sent. Such a receipt neither opens nor closes a hole.
- extra: accepted but not expected by S (published before S subscribed, after it ended,
  or on a channel it did not subscribe to). Informational.
- delivered after a flagged gap: expected, and it closed a covered hole (below).
- delivered once in order: expected, and it closed no hole or an uncovered one.

Separately, a receipt whose channel or event id differs from its `Published` record's
is counted as mismatched (silent: the subscriber got something else than what was
published) on top of its category above.

Holes and loss signals. The expected seqs of P strictly between the highest seq S had
received from P and the seq of an in-order receipt (one that raises that highest) are
holes. A hole is covered by a loss signal iff some `Flagged` of S (a `hubd.client` Gap:
history_incomplete, no_resume_point, dropped_by_server) lies after the position of the
receipt that set the previous highest seq of P (after S's `Subscribed` if none) and at
most `flag_window` positions after the closing receipt: hubd reports an overflow
(`events_dropped`) once the client has caught up on its queue or within about a second
while it stays behind, after the write that follows the hole, so the signal may follow
events published after the hole. Expected seqs above the last in-order receipt
of P (the tail) are covered iff some `Flagged` of S follows that receipt (or
`Subscribed` if none), at any later position. Holes not covered are SILENTLY LOST.

Every expected delivery thus ends as exactly one of: delivered once in order,
delivered after a flagged gap, out of order, covered by a loss signal, silently lost.

Unknown outcomes are also counted per publish: delivered to no subscriber, delivered
to at least one, and (informational, but worth a look) delivered to some but not all
of the subscribers that would have expected it had it been accepted.

The run is ok when nothing is silent: silently lost + duplicated + out of order +
refused-but-delivered + unknown events + mismatched == 0.

Cost: O(records log records) time, O(records) memory; a hole is decided with one bisect
over S's sorted flag positions, never by scanning the stream.

`python -m bench.checker records.jsonl` re-checks a saved run (`dump_jsonl` format: one
JSON object per line with a `kind` field): prints the table, exits 1 when not ok.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

# -- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """One publish attempt, as the publisher saw its answer.

    `outcome`: `accepted` (202), `refused` (4xx or 503, or nothing was sent), `unknown`
    (504, connection reset after sending, timeout: it may or may not be published).
    `sent_at`/`answered_at` are on the run's one monotonic clock."""

    publisher: str
    seq: int
    channel: str
    outcome: Literal["accepted", "refused", "unknown"]
    status: int | None
    event_id: str | None
    sent_at: float
    answered_at: float


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscriber's first confirmed subscription (its first Connected notice)."""

    subscriber: str
    channels: tuple[str, ...]
    at: float


@dataclass(frozen=True, slots=True)
class Received:
    """One event the subscriber's consumer got."""

    subscriber: str
    publisher: str
    seq: int
    channel: str
    event_id: str
    at: float


@dataclass(frozen=True, slots=True)
class Flagged:
    """One loss signal the subscriber got (a hubd.client Gap; `reason` is its reason,
    `dropped` its count for dropped_by_server)."""

    subscriber: str
    reason: str
    at: float
    dropped: int | None = None


@dataclass(frozen=True, slots=True)
class Ended:
    """The subscriber stopped (after the run drained)."""

    subscriber: str
    at: float


Record = Published | Subscribed | Received | Flagged | Ended

_KINDS: Final[dict[str, type[Record]]] = {
    "published": Published,
    "subscribed": Subscribed,
    "received": Received,
    "flagged": Flagged,
    "ended": Ended,
}
_KIND_OF: Final[dict[type[Record], str]] = {cls: kind for kind, cls in _KINDS.items()}

# -- the report --------------------------------------------------------------------------

SampleKind = Literal[
    "lost", "duplicated", "out_of_order", "refused_but_delivered", "unknown_event", "mismatched"
]
# The order in which the table shows a subscriber's examples: loss first, it is what a
# chaos run is about.
_SAMPLE_ORDER: Final[tuple[SampleKind, ...]] = (
    "lost",
    "unknown_event",
    "refused_but_delivered",
    "mismatched",
    "duplicated",
    "out_of_order",
)
SAMPLES_PER_KIND: Final = 5


@dataclass(frozen=True, slots=True)
class Sample:
    """One silent problem, to debug a failure: which event (`at` is when it was sent for
    a lost one, when it was received otherwise)."""

    kind: SampleKind
    publisher: str
    seq: int
    channel: str
    event_id: str | None
    at: float


@dataclass(slots=True)
class Counts:
    """Per-category counts, of one subscriber or of the whole run (see the module
    docstring for what each means). `received` counts every receipt; `flags` every
    loss signal, `gaps` them by reason and `dropped` the sum of their dropped counts."""

    expected: int = 0
    delivered_in_order: int = 0
    delivered_after_gap: int = 0
    covered: int = 0
    silently_lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    refused_but_delivered: int = 0
    unknown_events: int = 0
    mismatched: int = 0
    unknown_outcome_received: int = 0
    extra: int = 0
    received: int = 0
    flags: int = 0
    dropped: int = 0
    gaps: dict[str, int] = field(default_factory=dict)

    @property
    def silent(self) -> int:
        return (
            self.silently_lost
            + self.duplicated
            + self.out_of_order
            + self.refused_but_delivered
            + self.unknown_events
            + self.mismatched
        )

    def add(self, other: Counts) -> None:
        for f in fields(Counts):
            if f.name == "gaps":
                for reason, n in other.gaps.items():
                    self.gaps[reason] = self.gaps.get(reason, 0) + n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(Counts)}
        out["gaps"] = dict(self.gaps)
        out["silent"] = self.silent
        return out


@dataclass(slots=True)
class Totals(Counts):
    """The run's counts: the subscribers' summed, plus the publishes and, per `unknown`
    publish, whether anyone got it (`unknown_partial`: some but not all of the
    subscribers that would have expected it)."""

    subscribers: int = 0
    published: int = 0
    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    unknown_delivered: int = 0
    unknown_not_delivered: int = 0
    unknown_partial: int = 0

    def to_json(self) -> dict[str, Any]:
        out = Counts.to_json(self)
        for name in (
            "subscribers",
            "published",
            "accepted",
            "refused",
            "unknown",
            "unknown_delivered",
            "unknown_not_delivered",
            "unknown_partial",
        ):
            out[name] = getattr(self, name)
        return out


@dataclass(slots=True)
class SubscriberRow:
    """One subscriber: what it subscribed to, when, its counts and its first silent
    problems (up to `SAMPLES_PER_KIND` of each kind, earliest first)."""

    subscriber: str
    channels: tuple[str, ...] | None
    subscribed_at: float | None
    ended_at: float | None
    counts: Counts = field(default_factory=Counts)
    samples: list[Sample] = field(default_factory=list)

    @property
    def silent(self) -> int:
        return self.counts.silent

    def to_json(self) -> dict[str, Any]:
        return {
            "subscriber": self.subscriber,
            "channels": list(self.channels) if self.channels is not None else None,
            "subscribed_at": self.subscribed_at,
            "ended_at": self.ended_at,
            **self.counts.to_json(),
            "samples": [{f.name: getattr(s, f.name) for f in fields(Sample)} for s in self.samples],
        }


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of `check()`: `totals`, one row per subscriber (sorted by name), and
    the verdict: `silent` problems (see the module docstring), `ok` when there are none."""

    totals: Totals
    subscribers: tuple[SubscriberRow, ...]
    flag_window: int

    @property
    def silent(self) -> int:
        return self.totals.silent

    @property
    def ok(self) -> bool:
        return self.silent == 0

    def worst(self, n: int = 3) -> list[SubscriberRow]:
        """The `n` subscribers with the most silent problems (none when none has any)."""
        bad = [row for row in self.subscribers if row.silent > 0]
        bad.sort(key=lambda row: (-row.silent, row.subscriber))
        return bad[:n]

    def table(self, worst: int = 3) -> str:
        """The whole report as one plain-text table, verdict first, then the `worst`
        subscribers with their first silent problems."""
        t = self.totals
        rows: list[tuple[str, str]] = [
            (
                "events published",
                f"{t.published}  (accepted {t.accepted}, refused {t.refused}, unknown {t.unknown})",
            ),
            ("subscribers", str(t.subscribers)),
            ("expected deliveries", str(t.expected)),
            ("  delivered once in order", str(t.delivered_in_order)),
            ("  delivered after a flagged gap", str(t.delivered_after_gap)),
            ("  covered by a loss signal", str(t.covered)),
            ("  SILENTLY LOST", str(t.silently_lost)),
            ("DUPLICATED", str(t.duplicated)),
            ("OUT OF ORDER", str(t.out_of_order)),
            ("refused-but-delivered", str(t.refused_but_delivered)),
            ("unknown events (no such publish)", str(t.unknown_events)),
            ("mismatched (channel or id differs)", str(t.mismatched)),
            ("extra (accepted, not expected)", str(t.extra)),
            (
                "unknown-outcome delivered/not",
                f"{t.unknown_delivered}/{t.unknown_not_delivered}  "
                f"({t.unknown_outcome_received} receipts)",
            ),
            ("  to some but not all its subscribers", str(t.unknown_partial)),
            ("gaps seen", _gaps_text(t)),
        ]
        width = max(len(label) for label, _ in rows)
        verdict = (
            "chaos check: OK (nothing lost, duplicated or reordered silently)"
            if self.ok
            else f"chaos check: FAILED ({self.silent} silent problem(s))"
        )
        lines = [verdict, "-" * len(verdict)]
        lines += [f"{label:<{width}}  {value}" for label, value in rows]
        bad = self.worst(worst)
        if bad:
            lines.append("")
            failing = sum(1 for row in self.subscribers if row.silent > 0)
            lines.append(
                f"worst subscribers ({len(bad)} of {failing} with silent problems), first problems:"
            )
            for row in bad:
                c = row.counts
                kinds = (
                    ("lost", c.silently_lost),
                    ("duplicated", c.duplicated),
                    ("out of order", c.out_of_order),
                    ("refused-but-delivered", c.refused_but_delivered),
                    ("unknown events", c.unknown_events),
                    ("mismatched", c.mismatched),
                )
                what = ", ".join(f"{label} {n}" for label, n in kinds if n)
                lines.append(
                    f"  {row.subscriber}: silent {row.silent} ({what}) of {c.expected} expected"
                )
                shown = sorted(row.samples, key=lambda s: (_SAMPLE_ORDER.index(s.kind), s.at))
                for s in shown[:SAMPLES_PER_KIND]:
                    lines.append(
                        f"    {s.kind:<21} {s.publisher}#{s.seq} on {s.channel} "
                        f"id={s.event_id or '-'} at {s.at:.3f}"
                    )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Everything in the report as plain JSON-ready data."""
        return {
            "ok": self.ok,
            "silent": self.silent,
            "flag_window": self.flag_window,
            "totals": self.totals.to_json(),
            "subscribers": [row.to_json() for row in self.subscribers],
        }


def _gaps_text(t: Counts) -> str:
    if not t.gaps:
        return "none"
    text = ", ".join(f"{reason} {n}" for reason, n in sorted(t.gaps.items()))
    if t.dropped:
        text += f"  ({t.dropped} frames dropped)"
    return text


# -- the check ---------------------------------------------------------------------------


class _PubState:
    """What one subscriber has seen of one publisher during the walk."""

    __slots__ = ("anchor", "expected", "highest", "holes", "late", "received")

    def __init__(self, expected: list[int], anchor: int) -> None:
        self.expected = expected  # expected seqs, ascending
        self.highest = -math.inf  # highest seq received (from an in-order receipt)
        self.anchor = anchor  # position of that receipt, or of Subscribed
        self.received: set[int] = set()
        self.late: list[int] = []  # expected seqs received out of order
        # (lo, hi, covered): indexes into `expected` of a hole, hi exclusive.
        self.holes: list[tuple[int, int, bool]] = []


def _flag_in(flags: list[int], after: int, upto: float) -> bool:
    """Is there a flag position p with after < p <= upto?"""
    i = bisect_right(flags, after)
    return i < len(flags) and flags[i] <= upto


def check(records: Iterable[Record], *, flag_window: int = 4096) -> Report:
    """Check a run's records (see the module docstring for the rules).

    Raises ValueError when `flag_window` is negative or two `Published` records share a
    (publisher, seq): the checker's input contract, not hubd, would be broken."""
    if flag_window < 0:
        raise ValueError("flag_window must be >= 0")
    published: dict[tuple[str, int], Published] = {}
    streams: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if isinstance(r, Published):
            key = (r.publisher, r.seq)
            if key in published:
                raise ValueError(f"two Published records for {r.publisher}#{r.seq}")
            published[key] = r
        else:
            streams[r.subscriber].append(r)

    totals = Totals()
    by_publisher: dict[str, list[Published]] = defaultdict(list)
    unknown_pubs: list[Published] = []
    for p in published.values():
        totals.published += 1
        if p.outcome == "accepted":
            totals.accepted += 1
            by_publisher[p.publisher].append(p)
        elif p.outcome == "refused":
            totals.refused += 1
        else:
            totals.unknown += 1
            unknown_pubs.append(p)
    for pubs in by_publisher.values():
        pubs.sort(key=lambda p: p.seq)

    rows: list[SubscriberRow] = []
    # Who received each unknown-outcome publish, for the per-publish verdicts.
    unknown_receivers: dict[tuple[str, int], set[str]] = defaultdict(set)
    windows: dict[str, tuple[frozenset[str], float, float]] = {}
    for name in sorted(streams):
        row = _walk(name, streams[name], published, by_publisher, unknown_receivers, flag_window)
        rows.append(row)
        totals.add(row.counts)
        if row.channels is not None and row.subscribed_at is not None:
            end = row.ended_at if row.ended_at is not None else math.inf
            windows[name] = (frozenset(row.channels), row.subscribed_at, end)
    totals.subscribers = len(rows)

    for p in unknown_pubs:
        got = unknown_receivers.get((p.publisher, p.seq), set())
        if got:
            totals.unknown_delivered += 1
        else:
            totals.unknown_not_delivered += 1
        eligible = {
            name
            for name, (chans, start, end) in windows.items()
            if p.channel in chans and p.sent_at >= start and p.answered_at <= end
        }
        if eligible & got and eligible - got:
            totals.unknown_partial += 1
    return Report(totals=totals, subscribers=tuple(rows), flag_window=flag_window)


def _walk(
    name: str,
    stream: list[Record],
    published: dict[tuple[str, int], Published],
    by_publisher: dict[str, list[Published]],
    unknown_receivers: dict[tuple[str, int], set[str]],
    flag_window: int,
) -> SubscriberRow:
    """One subscriber's row: walk its records in the order it observed them."""
    c = Counts()
    samples: dict[str, list[Sample]] = defaultdict(list)

    def sample(kind: SampleKind, r: Received) -> None:
        if len(samples[kind]) < SAMPLES_PER_KIND:
            samples[kind].append(Sample(kind, r.publisher, r.seq, r.channel, r.event_id, r.at))

    subscribed: Subscribed | None = None
    sub_pos = -1
    ended: Ended | None = None
    flags: list[int] = []
    for pos, r in enumerate(stream):
        if type(r) is Flagged:
            flags.append(pos)
            c.flags += 1
            c.gaps[r.reason] = c.gaps.get(r.reason, 0) + 1
            c.dropped += r.dropped or 0
        elif type(r) is Subscribed and subscribed is None:
            subscribed, sub_pos = r, pos
        elif type(r) is Ended and ended is None:
            ended = r

    states: dict[str, _PubState] = {}
    if subscribed is not None:
        chans = frozenset(subscribed.channels)
        start = subscribed.at
        end = ended.at if ended is not None else math.inf
        for publisher, pubs in by_publisher.items():
            expected = [
                p.seq
                for p in pubs
                if p.channel in chans and p.sent_at >= start and p.answered_at <= end
            ]
            c.expected += len(expected)
            states[publisher] = _PubState(expected, sub_pos)

    for pos, r in enumerate(stream):
        if type(r) is not Received:
            continue
        c.received += 1
        pub = published.get((r.publisher, r.seq))
        if pub is None:
            c.unknown_events += 1
            sample("unknown_event", r)
            continue
        if r.channel != pub.channel or (pub.event_id is not None and r.event_id != pub.event_id):
            c.mismatched += 1
            sample("mismatched", r)
        st = states.get(r.publisher)
        if st is None:  # no accepted publish of this publisher is expected here
            st = states[r.publisher] = _PubState([], sub_pos)
        seq = r.seq
        if seq in st.received:
            c.duplicated += 1
            sample("duplicated", r)
            continue
        st.received.add(seq)
        if pub.outcome == "unknown":
            # The publisher never learnt where this one stands: it timed out (a stopped
            # node may carry it out seconds later) and went on. hubd orders a request
            # only after the previous one was answered, so an unknown-outcome event
            # takes no part in ordering: it neither opens a hole nor moves `highest`.
            unknown_receivers[(r.publisher, seq)].add(name)
            c.unknown_outcome_received += 1
            continue
        exp = st.expected
        i = bisect_left(exp, seq)
        is_expected = i < len(exp) and exp[i] == seq
        if seq < st.highest:
            if is_expected:
                st.late.append(seq)
            if pub.outcome == "refused":
                c.refused_but_delivered += 1
                sample("refused_but_delivered", r)
            else:
                c.out_of_order += 1
                sample("out_of_order", r)
            continue
        lo = 0 if st.highest == -math.inf else bisect_right(exp, st.highest)
        covered_hole = False
        if i > lo:
            covered_hole = _flag_in(flags, st.anchor, pos + flag_window)
            st.holes.append((lo, i, covered_hole))
        st.highest = seq
        st.anchor = pos
        if pub.outcome == "refused":
            c.refused_but_delivered += 1
            sample("refused_but_delivered", r)
        elif not is_expected:
            c.extra += 1
        elif covered_hole:
            c.delivered_after_gap += 1
        else:
            c.delivered_in_order += 1

    lost: list[Sample] = []
    for publisher, st in states.items():
        exp = st.expected
        lo = 0 if st.highest == -math.inf else bisect_right(exp, st.highest)
        if lo < len(exp):
            st.holes.append((lo, len(exp), _flag_in(flags, st.anchor, math.inf)))
        st.late.sort()
        taken = 0  # this publisher's earliest silent losses, the candidates for `lost`
        for lo, hi, covered in st.holes:
            # Expected events of this hole that came later, out of order, are not missing.
            late = bisect_right(st.late, exp[hi - 1]) - bisect_left(st.late, exp[lo])
            missing = hi - lo - late
            if covered:
                c.covered += missing
                continue
            c.silently_lost += missing
            for seq in exp[lo:hi] if taken < SAMPLES_PER_KIND else ():
                if seq in st.received:
                    continue
                p = published[(publisher, seq)]
                lost.append(Sample("lost", publisher, seq, p.channel, p.event_id, p.sent_at))
                taken += 1
                if taken >= SAMPLES_PER_KIND:
                    break
    lost.sort(key=lambda s: s.at)
    out = lost[:SAMPLES_PER_KIND]
    for kind in _SAMPLE_ORDER[1:]:
        out += samples.get(kind, [])
    return SubscriberRow(
        subscriber=name,
        channels=subscribed.channels if subscribed is not None else None,
        subscribed_at=subscribed.at if subscribed is not None else None,
        ended_at=ended.at if ended is not None else None,
        counts=c,
        samples=out,
    )


# -- saving and loading ------------------------------------------------------------------


def dump_jsonl(records: Iterable[Record], path: str | Path) -> None:
    """Write `records` to `path`, one JSON object per line with a `kind` field
    (`published`, `subscribed`, `received`, `flagged`, `ended`) and the record's fields."""
    encoder = msgspec.json.Encoder()
    names = {cls: tuple(f.name for f in fields(cls)) for cls in _KINDS.values()}
    with open(path, "wb") as out:
        for r in records:
            cls = type(r)
            line = {"kind": _KIND_OF[cls]}
            line.update({n: getattr(r, n) for n in names[cls]})
            out.write(encoder.encode(line))
            out.write(b"\n")


def load_jsonl(path: str | Path) -> list[Record]:
    """Read records written by `dump_jsonl`, in file order; blank lines are skipped.

    Raises ValueError naming the line when one is not valid JSON, has an unknown `kind`
    or fields of the wrong type."""
    records: list[Record] = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = msgspec.json.decode(line)
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
                kind = raw.pop("kind", None)
                cls = _KINDS.get(kind) if isinstance(kind, str) else None
                if cls is None:
                    raise ValueError(f"unknown kind {kind!r}")
                records.append(msgspec.convert(raw, cls))
            except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return records


# -- command line ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.checker records.jsonl`: print the table; 0 when ok, 1 when not,
    2 when the file cannot be read."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.checker",
        description="Re-check a saved chaos run: was anything lost silently?",
    )
    parser.add_argument("records", type=Path, help="records.jsonl written by dump_jsonl")
    parser.add_argument(
        "--flag-window",
        type=int,
        default=4096,
        help="how many observations after a hole a loss signal still covers it (4096)",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    opts = parser.parse_args(argv)
    try:
        records = load_jsonl(opts.records)
        report = check(records, flag_window=opts.flag_window)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if opts.json is not None:
        opts.json.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
