"""config/monitoring/: the Prometheus alert rules and the Grafana dashboard parse, and every
series their queries name is one hubd exports, read from a real in-process `/metrics`
(a cluster node, and a single node with a history file). Renaming a series without
updating them fails here (`test_a_renamed_series_is_caught` proves the check bites), and
so does exporting a hubd series that docs/operations.md does not describe."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .helpers import ADMIN
from .web.asgi import build_hubd, settings_for

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "config" / "monitoring"
RULES = MONITORING / "hubd-alerts.yml"
DASHBOARD = MONITORING / "hubd-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = frozenset({"up"})

# -- PromQL: which series an expression names ------------------------------------------

_COMMENT = re.compile(r"#[^\n]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
# A name not inside a number (0.99, 1e3) and not a function call.
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana query, `$variables` and all)
    selects: labels, label lists, ranges, strings and function names left out."""
    text = _COMMENT.sub(" ", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    return {m for m in _NAME.findall(text) if m.lower() not in _KEYWORDS}


def unknown_series(queries: Iterable[tuple[str, str]], exported: set[str]) -> list[str]:
    """`<where>: <name>` for each name a query selects that nobody exports."""
    known = exported | PROMETHEUS_SERIES
    return [
        f"{where}: {name}"
        for where, expr in queries
        for name in sorted(series_names(expr))
        if name not in known
    ]


def assert_all_exported(queries: Iterable[tuple[str, str]], exported: set[str]) -> None:
    missing = unknown_series(queries, exported)
    assert not missing, "queries name series hubd does not export:\n" + "\n".join(missing)


# -- what hubd exports -----------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def wire_names(text: str) -> set[str]:
    """Every series name of a Prometheus text exposition, as a query must spell it:
    those with samples, and those a family of its type has when it has none yet (a
    counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


async def scrape(**sections: Any) -> tuple[str, Any]:
    """GET /metrics (admin) from the app `hubd serve` builds on the test config plus
    `sections`; the text and the app's context."""
    hubd = build_hubd(settings_for(**sections))
    if hubd.ctx.metrics is not None and sections.get("hub", {}).get("history_path"):
        # The history file's figures, as once `hubd serve` has opened it.
        hubd.ctx.metrics.watch_history(SimpleNamespace(pending=0, written=0, dropped=0, lost=0))
    async with hubd.http() as http:
        response = await http.get("/metrics", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.text, hubd.ctx


async def expositions() -> list[str]:
    """/metrics of a cluster node (Redis is never connected: its series exist from the
    start) and of a single node with a history file."""
    cluster, _ = await scrape(backplane={"kind": "redis", "url": "redis://127.0.0.1:1/0"})
    single, _ = await scrape(hub={"history_path": "/nonexistent/hubd-history.db"})
    return [cluster, single]


async def exported() -> set[str]:
    """Every series name either exports."""
    return set().union(*(wire_names(text) for text in await expositions()))


# -- the files -------------------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and list(document) == ["groups"], document
    return [rule for group in document["groups"] for rule in group["rules"]]


def load_dashboard() -> dict[str, Any]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(dashboard, dict)
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def rule_queries() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in load_rules()]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = load_dashboard()
    queries = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append((f"variable {variable['name']}", variable["definition"]))
    return queries


# -- tests -----------------------------------------------------------------------------


def test_series_names_of_promql() -> None:
    expr = """
        histogram_quantile(0.99, sum by (instance, le) (
          rate(hubd_publish_duration_seconds_bucket{status_class="2xx", job=~"$job"}[5m])))
          > 1e3
        and on (instance) hubd_draining == 0  # a comment naming not_a_series
        unless absent(up{job="hubd"}) or process_open_fds{job="hubd"}
          / ignoring (x) process_max_fds[$__rate_interval] offset 1h
    """
    assert series_names(expr) == {
        "hubd_publish_duration_seconds_bucket",
        "hubd_draining",
        "up",
        "process_open_fds",
        "process_max_fds",
    }


async def test_what_hubd_exports_includes_every_kind_of_series() -> None:
    names = await exported()
    for name in [
        "hubd_connections_open",  # a gauge
        "hubd_connections_rejected_total",  # a counter (with no sample yet)
        "hubd_publish_duration_seconds_bucket",  # a histogram
        "hubd_publish_duration_seconds_count",
        "hubd_backplane_errors_total",  # a cluster node's
        "hubd_backplane_reconnects_total",
        "hubd_backplane_lag",
        "hubd_history_file_events_lost_total",  # with a history file
        "process_resident_memory_bytes",  # the standard process collector
        "process_open_fds",
        "process_cpu_seconds_total",
    ]:
        assert name in names, name
    # A query must spell the wire name: a counter's family name alone selects nothing.
    assert "hubd_connections_rejected" not in names
    assert "hubd_publish_duration_seconds" not in names


def test_the_alert_rules_parse() -> None:
    rules = load_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    # What the issue asked for is there.
    for wanted in [
        "HubdDown",
        "HubdTargetMissing",
        "HubdBackplaneDown",
        "HubdBackplaneReconnecting",
        "HubdDropsRising",
        "HubdConnectionsNearLimit",
        "HubdFileDescriptorsNearLimit",
        "HubdPublishLatencyHigh",
        "HubdHistoryFileHole",
    ]:
        assert wanted in names, wanted


async def test_every_series_the_alert_rules_name_is_exported() -> None:
    assert_all_exported(rule_queries(), await exported())


def test_the_dashboard_parses() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "hubd-overview"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Every query is scoped to the chosen job and instances.
            assert 'job="$job"' in target["expr"], (panel["title"], target["expr"])
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


async def test_every_series_the_dashboard_names_is_exported() -> None:
    names = await exported()
    queries = dashboard_queries()
    # `label_values(<selector>, <label>)`: only its selector names a series.
    queries = [
        (where, re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", expr)) for where, expr in queries
    ]
    assert_all_exported(queries, names)
    # The dashboard shows what the issue asked for.
    shown = set().union(*(series_names(expr) for _, expr in queries))
    for name in [
        "hubd_connections_open",
        "hubd_events_published_total",
        "hubd_events_delivered_total",
        "hubd_events_dropped_total",
        "hubd_delivery_latency_seconds_bucket",
        "hubd_publish_duration_seconds_bucket",
        "hubd_backplane_up",
        "hubd_backplane_errors_total",
        "hubd_backplane_reconnects_total",
        "hubd_backplane_lag",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ]:
        assert name in shown, name


async def test_a_renamed_series_is_caught() -> None:
    names = await exported()
    renamed = [
        ("a rule", "hubd_connections_opened > 10"),  # renamed
        ("a rule", "rate(hubd_events_published[5m])"),  # a counter without _total
        ("a rule", "histogram_quantile(0.9, rate(hubd_publish_duration_seconds[5m]))"),
        ("fine", 'sum by (reason) (hubd_connections_rejected_total{reason="draining"})'),
    ]
    assert unknown_series(renamed, names) == [
        "a rule: hubd_connections_opened",
        "a rule: hubd_events_published",
        "a rule: hubd_publish_duration_seconds",
    ]
    with pytest.raises(AssertionError, match="hubd_connections_opened"):
        assert_all_exported(renamed, names)
    # And the rules file itself, with one series renamed in it.
    text = RULES.read_text(encoding="utf-8").replace(
        "hubd_backplane_reconnects_total", "hubd_backplane_reconnections_total"
    )
    rules = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]
    with pytest.raises(AssertionError, match="HubdBackplaneReconnecting: hubd_backplane_recon"):
        assert_all_exported([(r["alert"], r["expr"]) for r in rules], names)


async def test_every_hubd_series_is_described_in_the_operations_guide() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    documented = set(re.findall(r"`(hubd_\w+)`", text))
    families = {
        family.name + ("_total" if family.type == "counter" else "")
        for exposition in await expositions()
        for family in text_string_to_metric_families(exposition)
        if family.name.startswith("hubd_")
    }
    assert sorted(families - documented) == []
