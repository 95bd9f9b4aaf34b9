"""`hubd_publish_duration_seconds`: each answered `POST /v1/events` is timed from its
arrival at the publish handler to its answer being sent, by status class, and read back
from `/metrics`. On trio's virtual clock, with the publish itself made to take a known
time; and refused handshakes are counted by reason."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from hubd.web import publish_route

from ..helpers import ADMIN, PUB, SUB, bearer, subscribe_path
from .conftest import MakeHubd

EVENT = {"event_type": "pdfm", "message": "X"}


def histogram(text: str, status_class: str) -> dict[str, float]:
    """`count`, `sum` and the cumulative buckets (by `le`) of one status class."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "hubd_publish_duration_seconds":
            continue
        for s in family.samples:
            if s.labels["status_class"] != status_class:
                continue
            key = s.labels["le"] if s.name.endswith("_bucket") else s.name.rsplit("_", 1)[1]
            out[key] = s.value
    return out


async def test_publishes_are_timed_from_arrival_to_answer(
    make_hubd: MakeHubd,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = publish_route.publish_through

    async def slow(*args: Any) -> Any:
        await trio.sleep(0.3)  # a publish that takes 300 ms (a slow Redis, say)
        return await real(*args)

    monkeypatch.setattr(publish_route, "publish_through", slow)
    hubd = make_hubd()
    async with hubd.http() as http:
        for _ in range(2):
            assert (await http.post("/v1/events", json=EVENT, headers=PUB)).status_code == 202
        refused = await http.post("/v1/events", json=EVENT, headers=bearer("nope"))
        assert refused.status_code == 401
        text = (await http.get("/metrics", headers=ADMIN)).text

    accepted = histogram(text, "2xx")
    assert accepted["count"] == 2
    assert accepted["sum"] == pytest.approx(0.6)
    assert (accepted["0.25"], accepted["0.5"], accepted["+Inf"]) == (0, 2, 2)
    rejected = histogram(text, "4xx")  # refused before the publish: no time passed
    assert (rejected["count"], rejected["sum"], rejected["2.5e-05"]) == (1, 0, 1)
    assert histogram(text, "5xx")["count"] == 0


async def test_refused_handshakes_are_counted_by_status_and_reason(
    make_hubd: MakeHubd,
) -> None:
    hubd = make_hubd(limits={"max_connections": 1})
    async with hubd.subscribe("pdfm"):
        (await hubd.rejected(subscribe_path("pdfm"), SUB)).error(503)  # at capacity
    (await hubd.rejected(subscribe_path("pdfm"), bearer("nope"))).error(401)
    hubd.hub.draining = True
    (await hubd.rejected(subscribe_path("pdfm"), SUB)).error(503)  # draining
    async with hubd.http() as http:
        text = (await http.get("/metrics", headers=ADMIN)).text
    rejected = {
        (s.labels["status"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "hubd_connections_rejected"
        for s in family.samples
    }
    assert rejected == {
        ("503", "at_capacity"): 1,
        ("503", "draining"): 1,
        ("401", "unauthorized"): 1,
    }
