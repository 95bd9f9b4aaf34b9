"""`publish_request`: who may publish what, validation, all-or-nothing, response shapes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from hubd.core.auth import Principal
from hubd.core.errors import HubError
from hubd.core.hub import Hub
from hubd.core.publishing import MAX_BATCH, publish_request

from .conftest import ADMIN, PUBLISHER, SUBSCRIBER, admit, make_hub, principal, publish_body, queued

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def ev(channel: str = "pdfm", message: Any = "VM_STATE_CHANGED", **extra: Any) -> dict[str, Any]:
    return {"event_type": channel, "message": message, **extra}


def refused(hub: Hub, who: Principal, payload: bytes) -> HubError:
    with pytest.raises(HubError) as info:
        publish_request(hub, who, payload)
    return info.value


async def listener(hub: Hub, channels: str = "pdfm,orchestrator") -> Any:
    """A subscriber to every publishable channel, with its confirmation already taken."""
    s = admit(hub, ADMIN, channels)
    await queued(s)
    return s


# -- success and the delivered envelope ----------------------------------------------------


async def test_single_event_is_delivered_and_answered_with_id() -> None:
    hub = make_hub()
    s = await listener(hub)
    body = {"vm": "vm-1", "state": "running"}
    result = publish_request(hub, PUBLISHER, publish_body(ev(body=body)))
    response: dict[str, Any] = result.response()
    assert list(response) == ["id"]
    assert HEX64.match(response["id"])
    (frame,) = await queued(s)
    assert list(frame) == ["id", "event_type", "timestamp", "message", "body"]
    assert frame["id"] == response["id"]
    assert frame["event_type"] == "pdfm"
    assert TIMESTAMP.match(frame["timestamp"])
    assert frame["message"] == "VM_STATE_CHANGED"
    assert frame["body"] == body


async def test_event_without_body_omits_it() -> None:
    hub = make_hub()
    s = await listener(hub)
    publish_request(hub, PUBLISHER, publish_body(ev()))
    (frame,) = await queued(s)
    assert "body" not in frame and "client_id" not in frame and "ref_id" not in frame


async def test_batch_is_answered_with_ids_in_order_and_delivered_in_order() -> None:
    hub = make_hub()
    s = await listener(hub)
    events = [ev("pdfm" if i % 2 else "orchestrator", f"E{i}") for i in range(10)]
    response: dict[str, Any] = publish_request(hub, PUBLISHER, publish_body(*events)).response()
    assert list(response) == ["ids"]
    frames = await queued(s)
    assert [f["message"] for f in frames] == [f"E{i}" for i in range(10)]
    assert response["ids"] == [f["id"] for f in frames]
    assert len(set(response["ids"])) == 10


async def test_array_of_one_is_still_answered_with_ids() -> None:
    hub = make_hub()
    response: dict[str, Any] = publish_request(
        hub, PUBLISHER, publish_body(ev(), batch=True)
    ).response()
    assert list(response) == ["ids"] and len(response["ids"]) == 1


async def test_event_type_is_trimmed_and_case_insensitive() -> None:
    hub = make_hub()
    s = await listener(hub)
    publish_request(hub, PUBLISHER, publish_body(ev(" PDFM ")))
    assert [f["event_type"] for f in await queued(s)] == ["pdfm"]


async def test_extra_channels_are_publishable() -> None:
    hub = make_hub(channels=["backups"])
    s = await listener(hub, "backups")
    publish_request(hub, PUBLISHER, publish_body(ev("backups", "DONE")))
    assert [f["message"] for f in await queued(s)] == ["DONE"]


async def test_publish_never_reaches_a_global_only_subscriber() -> None:
    hub = make_hub()
    global_only = admit(hub)
    await queued(global_only)
    publish_request(hub, PUBLISHER, publish_body(ev("pdfm"), ev("orchestrator")))
    assert await queued(global_only) == []


# -- roles and allow-lists -----------------------------------------------------------------


async def test_subscriber_only_principal_may_not_publish() -> None:
    err = refused(make_hub(), SUBSCRIBER, publish_body(ev()))
    assert (err.status, err.code) == (403, "forbidden")
    assert "'publisher' role" in err.message


async def test_admin_may_publish_anywhere_publishable() -> None:
    hub = make_hub()
    s = await listener(hub)
    publish_request(hub, ADMIN, publish_body(ev("pdfm"), ev("global", "NOTICE")))
    assert [f["message"] for f in await queued(s)] == ["VM_STATE_CHANGED", "NOTICE"]


async def test_global_needs_admin() -> None:
    hub = make_hub()
    s = await listener(hub)
    err = refused(hub, PUBLISHER, publish_body(ev("global")))
    assert (err.status, err.code) == (403, "forbidden")
    assert "admin" in err.message
    assert await queued(s) == []


async def test_global_by_admin_reaches_everyone() -> None:
    hub = make_hub()
    sessions = [admit(hub), admit(hub, SUBSCRIBER, "pdfm")]
    for s in sessions:
        await queued(s)
    publish_request(hub, ADMIN, publish_body(ev("global", "MAINTENANCE")))
    for s in sessions:
        assert [f["message"] for f in await queued(s)] == ["MAINTENANCE"]


@pytest.mark.parametrize("channel", ["health", "system", "HEALTH"])
async def test_server_owned_channels_are_400(channel: str) -> None:
    err = refused(make_hub(), ADMIN, publish_body(ev(channel)))
    assert (err.status, err.code) == (400, "server_owned_channel")


async def test_allow_list_is_enforced_on_publish() -> None:
    who = principal("limited", ["publisher"], channels=["orchestrator"])
    hub = make_hub()
    s = await listener(hub)
    err = refused(hub, who, publish_body(ev("pdfm")))
    assert (err.status, err.code) == (403, "forbidden")
    assert "'pdfm'" in err.message
    publish_request(hub, who, publish_body(ev("orchestrator", "OK")))
    assert [f["message"] for f in await queued(s)] == ["OK"]


async def test_allow_listed_admin_is_still_held_to_its_list() -> None:
    who = principal("ops", ["admin"], channels=["pdfm"])
    assert refused(make_hub(), who, publish_body(ev("orchestrator"))).status == 403


@pytest.mark.parametrize("channel", ["bogus", "", "pdfm,health"])
async def test_unknown_channel_is_400_listing_publishable_ones(channel: str) -> None:
    err = refused(make_hub(), ADMIN, publish_body(ev(channel)))
    assert (err.status, err.code) == (400, "unknown_channel")
    assert err.message.endswith("publishable channels are: global, orchestrator, pdfm")


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"event_type": "pdfm"}, "'message'"),
        ({"message": "X"}, "'event_type'"),
        (ev(message=""), "'message'"),
        (ev(message="   "), "'message'"),
        ({"event_type": 3, "message": "X"}, "'event_type' must be a string"),
        (ev(message=["X"]), "'message' must be a string"),
        (ev(client_id=5), "'client_id' must be a string"),
        (ev(colour="red"), "unknown field 'colour'"),
    ],
)
async def test_malformed_event_is_400_naming_the_field(payload: Any, fragment: str) -> None:
    err = refused(make_hub(), ADMIN, json.dumps(payload).encode())
    assert err.status == 400
    assert fragment in err.message


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "bad_request"),
        (b"  \n", "bad_request"),
        (b"not json", "bad_request"),
        (b'{"event_type": "pdfm",', "bad_request"),
        (b"42", "invalid_event"),
        (b'"VM_STATE_CHANGED"', "invalid_event"),
        (b"[1]", "invalid_event"),
    ],
)
async def test_malformed_body_is_400(payload: bytes, code: str) -> None:
    err = refused(make_hub(), ADMIN, payload)
    assert (err.status, err.code) == (400, code)


async def test_empty_batch_is_400() -> None:
    err = refused(make_hub(), ADMIN, b"[]")
    assert (err.status, err.code) == (400, "bad_request")


async def test_batch_of_1000_is_accepted() -> None:
    hub = make_hub(queue_size=MAX_BATCH)
    s = await listener(hub)
    assert MAX_BATCH == 1000
    response: dict[str, Any] = publish_request(
        hub, PUBLISHER, publish_body(*[ev()] * 1000)
    ).response()
    assert len(response["ids"]) == 1000
    assert len(await queued(s)) == 1000


async def test_batch_of_1001_is_400_and_publishes_nothing() -> None:
    hub = make_hub()
    s = await listener(hub)
    err = refused(hub, PUBLISHER, publish_body(*[ev()] * 1001))
    assert (err.status, err.code) == (400, "batch_too_large")
    assert "1001" in err.message and "1000" in err.message
    assert await queued(s) == []


async def test_bad_event_in_a_batch_is_named_by_index() -> None:
    err = refused(make_hub(), PUBLISHER, publish_body(ev(), ev("bogus")))
    assert err.message.startswith("event [1]: ")
    err = refused(make_hub(), PUBLISHER, publish_body(ev(), {"event_type": "pdfm"}))
    assert "'message'" in err.message and "$[1]" in err.message


# -- all or nothing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ev("bogus"),  # 400 unknown channel
        ev("health"),  # 400 server-owned
        ev(message=""),  # 400 empty message
        ev("global"),  # 403 needs admin
        ev(client_id="no-such-client"),  # 404 unknown target
        {"event_type": "pdfm"},  # 400 at decode time
    ],
)
async def test_one_bad_event_publishes_none_of_the_batch(bad: dict[str, Any]) -> None:
    hub = make_hub()
    s = await listener(hub)
    with pytest.raises(HubError):
        publish_request(hub, PUBLISHER, publish_body(ev(message="FIRST"), bad, ev()))
    assert await queued(s) == []
    assert sum(hub.published.values()) == 0


# -- targeted events -----------------------------------------------------------------------


async def test_targeted_event_reaches_only_its_target_with_client_id() -> None:
    hub = make_hub()
    a, b = admit(hub, SUBSCRIBER, "pdfm"), admit(hub, SUBSCRIBER, "pdfm")
    await queued(a)
    await queued(b)
    publish_request(hub, PUBLISHER, publish_body(ev(client_id=b.client_id)))
    assert await queued(a) == []
    (frame,) = await queued(b)
    assert frame["client_id"] == b.client_id
    assert list(frame) == ["id", "event_type", "timestamp", "message", "client_id"]


async def test_unknown_target_is_404() -> None:
    err = refused(make_hub(), PUBLISHER, publish_body(ev(client_id="nobody")))
    assert (err.status, err.code) == (404, "unknown_client")
    assert "'nobody'" in err.message


async def test_disconnected_target_is_404() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    hub.unregister(s)
    assert refused(hub, PUBLISHER, publish_body(ev(client_id=s.client_id))).status == 404


async def test_target_not_subscribed_to_the_channel_is_409() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "orchestrator")
    await queued(s)
    err = refused(hub, PUBLISHER, publish_body(ev("pdfm", client_id=s.client_id)))
    assert (err.status, err.code) == (409, "not_subscribed")
    assert await queued(s) == []


async def test_targeted_global_event_by_admin() -> None:
    hub = make_hub()
    a, b = admit(hub), admit(hub)
    await queued(a)
    await queued(b)
    publish_request(hub, ADMIN, publish_body(ev("global", "YOU", client_id=a.client_id)))
    assert [f["message"] for f in await queued(a)] == ["YOU"]
    assert await queued(b) == []


# -- draining ------------------------------------------------------------------------------


async def test_draining_hub_refuses_publishes_with_503() -> None:
    hub = make_hub()
    s = await listener(hub)
    hub.draining = True
    err = refused(hub, ADMIN, publish_body(ev()))
    assert (err.status, err.code) == (503, "draining")
    assert await queued(s) == []
