"""HubClient.publish_many against a mock HTTP server: requests cut by count and by bytes,
a request refused as too large split in halves, the ids published before a failure kept
on the exception, and which failures leave the outcome unknown."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hubd.client import Credentials, HubClient, HubdError, NetworkError, ProtocolError
from hubd.client.api import MAX_REQUEST_BYTES

Handler = Callable[[httpx.Request], httpx.Response]


class MockHub:
    """Accepts POST /v1/events like hubd: at most `limit` bytes of body (413 otherwise),
    ids `id-<n>` from each event's body; `refuse(events)` may return an error answer."""

    def __init__(self, limit: int = 1_048_576) -> None:
        self.limit = limit
        self.bodies: list[bytes] = []
        self.refuse: Callable[[list[dict[str, Any]]], httpx.Response | None] = lambda _: None

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        self.bodies.append(body)
        if len(body) > self.limit:
            return httpx.Response(
                413, json={"error": "payload_too_large", "message": f"{len(body)} bytes"}
            )
        parsed = json.loads(body)
        events = parsed if isinstance(parsed, list) else [parsed]
        if (answer := self.refuse(events)) is not None:
            return answer
        return httpx.Response(202, json={"ids": [f"id-{e['body']['n']}" for e in events]})

    def sizes(self) -> list[int]:
        return [len(json.loads(b)) for b in self.bodies]


def client_for(handler: Handler) -> HubClient:
    client = HubClient("http://hub.test:8080", Credentials(api_key="k"))

    def new_http() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=client.endpoint.base_url, transport=httpx.MockTransport(handler)
        )

    client._new_http = new_http  # type: ignore[method-assign]
    return client


def events(count: int, body_bytes: int = 10) -> list[dict[str, Any]]:
    return [
        {"event_type": "pdfm", "message": "M", "body": {"n": n, "pad": "x" * body_bytes}}
        for n in range(count)
    ]


async def test_requests_are_cut_at_1000_events_and_at_the_byte_budget() -> None:
    hub = MockHub()
    ids = await client_for(hub.handle).publish_many(events(2500))
    assert ids == [f"id-{n}" for n in range(2500)]
    assert hub.sizes() == [1000, 1000, 500]

    hub = MockHub()
    ids = await client_for(hub.handle).publish_many(events(50, 1000), max_request_bytes=10_000)
    assert ids == [f"id-{n}" for n in range(50)]
    assert len(hub.bodies) > 5
    assert all(len(body) <= 10_000 for body in hub.bodies)
    assert hub.sizes()[0] == 9  # as many as fit


async def test_the_default_budget_stays_under_hubds_default_limit() -> None:
    hub = MockHub(limit=1_048_576)
    # 900 events of ~1.2 kB: within the count limit, over 1 MiB in bytes.
    ids = await client_for(hub.handle).publish_many(events(900, 1200))
    assert len(ids) == 900
    assert all(len(body) <= MAX_REQUEST_BYTES for body in hub.bodies)
    assert len(hub.bodies) == 2  # no 413 on the way


async def test_a_request_refused_as_too_large_is_split_in_halves() -> None:
    hub = MockHub(limit=20_000)  # a server configured below the client's budget
    ids = await client_for(hub.handle).publish_many(events(100, 500))
    assert ids == [f"id-{n}" for n in range(100)]
    statuses = [len(body) <= 20_000 for body in hub.bodies]
    assert statuses[0] is False  # the first try was refused whole
    assert sum(statuses) >= 3


async def test_a_single_event_over_the_limit_is_not_published() -> None:
    hub = MockHub(limit=5_000)
    batch = events(6, 500)
    batch[4]["body"]["pad"] = "y" * 10_000
    with pytest.raises(HubdError) as info:
        await client_for(hub.handle).publish_many(batch)
    assert info.value.status == 413
    assert not info.value.outcome_unknown
    # Everything before the large event went out; the one after was not tried.
    assert info.value.published_ids == ["id-0", "id-1", "id-2", "id-3"]


async def test_published_ids_are_kept_when_a_later_request_fails() -> None:
    hub = MockHub()

    def refuse(batch: list[dict[str, Any]]) -> httpx.Response | None:
        if batch[0]["body"]["n"] >= 2000:
            return httpx.Response(400, json={"error": "bad", "message": "event [0]: nope"})
        return None

    hub.refuse = refuse
    with pytest.raises(HubdError) as info:
        await client_for(hub.handle).publish_many(events(2500))
    assert info.value.published_ids == [f"id-{n}" for n in range(2000)]


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (httpx.Response(504, json={"error": "publish_outcome_unknown", "message": "?"}), HubdError),
        (httpx.Response(202, json={"ids": "odd"}), ProtocolError),
        (httpx.Response(202, text="not json"), ProtocolError),
    ],
)
async def test_answers_that_leave_the_outcome_unknown(
    answer: httpx.Response, kind: type[Exception]
) -> None:
    hub = MockHub()
    hub.refuse = lambda batch: answer if batch[0]["body"]["n"] >= 1000 else None
    with pytest.raises(kind) as info:
        await client_for(hub.handle).publish_many(events(1200))
    error = info.value
    assert getattr(error, "outcome_unknown") is True  # noqa: B009
    assert len(getattr(error, "published_ids")) == 1000  # noqa: B009


@pytest.mark.parametrize(
    ("failure", "sent"),
    [
        (httpx.ReadTimeout("timed out"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response"), True),
        (httpx.ReadError("connection reset"), True),
        (httpx.ConnectError("Connection refused"), False),
        (httpx.ConnectTimeout("timed out"), False),
    ],
)
async def test_network_failures_say_whether_the_request_was_sent(
    failure: Exception, sent: bool
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    with pytest.raises(NetworkError) as info:
        await client_for(handler).publish("pdfm", "M")
    assert info.value.request_sent is sent
    assert info.value.outcome_unknown is sent
    assert ("may have been carried out" in str(info.value)) is sent


def test_a_refusal_other_than_504_is_a_known_outcome() -> None:
    assert not HubdError(400, "bad_request", "x").outcome_unknown
    assert not HubdError(503, "draining", "x").outcome_unknown
    assert HubdError(504, "publish_outcome_unknown", "x").outcome_unknown
