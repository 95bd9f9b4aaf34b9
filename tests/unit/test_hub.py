"""The hub: admission rules, the confirmation frame, routing, order and unsubscribe."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import trio
import trio.testing

from hubd.core.errors import HubError
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.unsubscribe import unsubscribe
from hubd.protocol.envelope import Envelope, encode_bytes
from hubd.protocol.notices import CONFIRMATION

from .conftest import ADMIN, PUBLISHER, SUBSCRIBER, admit, make_hub, principal, queued

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def refusal(hub: Hub, *args: Any) -> HubError:
    with pytest.raises(HubError) as info:
        admit(hub, *args)
    return info.value


def event(channel: str, message: str = "EVT", body: Any = None) -> Frame:
    envelope = Envelope(id="e", event_type=channel, timestamp="t", message=message, body=body)
    return Frame(encode_bytes(envelope))


async def messages(session: Any) -> list[str]:
    return [f["message"] for f in await queued(session)]


# -- admission -----------------------------------------------------------------------------


async def test_admit_registers_and_subscribes() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm,health", "192.0.2.1")
    assert hub.sessions == {s.client_id: s}
    assert s.subscriptions == ["pdfm", "health", "global"]
    assert s.ip == "192.0.2.1"
    assert s.principal is SUBSCRIBER
    assert uuid.UUID(s.client_id).version == 4


async def test_draining_refuses_with_503() -> None:
    hub = make_hub()
    hub.draining = True
    err = refusal(hub, ADMIN)
    assert (err.status, err.code) == (503, "draining")
    assert hub.sessions == {}


async def test_principal_without_subscriber_role_gets_403() -> None:
    err = refusal(make_hub(), PUBLISHER)
    assert (err.status, err.code) == (403, "forbidden")
    assert "'subscriber' role" in err.message


async def test_admin_may_subscribe() -> None:
    assert admit(make_hub(), ADMIN, "pdfm").subscriptions == ["pdfm", "global"]


async def test_unknown_channel_gets_400_listing_the_valid_ones() -> None:
    err = refusal(make_hub(channels=["backups"]), SUBSCRIBER, "pdfm,bogus")
    assert (err.status, err.code) == (400, "unknown_channel")
    assert "'bogus'" in err.message
    assert "backups, global, health, orchestrator, pdfm, system" in err.message


async def test_channel_outside_the_allow_list_gets_403() -> None:
    who = principal(channels=["pdfm"])
    err = refusal(make_hub(), who, "pdfm,health")
    assert (err.status, err.code) == (403, "forbidden")
    assert "'health'" in err.message


async def test_allow_list_admits_its_channels_and_global() -> None:
    who = principal(channels=["pdfm"])
    assert admit(make_hub(), who, "pdfm,global").subscriptions == ["pdfm", "global"]
    assert admit(make_hub(), who, None).subscriptions == ["global"]


async def test_second_connection_from_the_same_ip_gets_409() -> None:
    hub = make_hub()
    first = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    err = refusal(hub, ADMIN, None, "192.0.2.1")
    assert (err.status, err.code) == (409, "ip_in_use")
    assert "192.0.2.1" in err.message
    assert list(hub.sessions.values()) == [first]
    admit(hub, SUBSCRIBER, None, "192.0.2.2")  # another IP is fine


async def test_ip_slot_is_released_at_once_on_unregister() -> None:
    hub = make_hub()
    first = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    hub.unregister(first)
    assert hub.sessions == {}
    second = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    assert hub.sessions == {second.client_id: second}


async def test_unregister_is_idempotent_and_keeps_a_newer_session_slot() -> None:
    hub = make_hub()
    first = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    hub.unregister(first)
    second = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    hub.unregister(first)  # a late second unregister of the old session
    assert hub.sessions == {second.client_id: second}
    assert refusal(hub, SUBSCRIBER, None, "192.0.2.1").status == 409


async def test_one_connection_per_ip_false_allows_two() -> None:
    hub = make_hub(one_connection_per_ip=False)
    a = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    b = admit(hub, SUBSCRIBER, None, "192.0.2.1")
    assert set(hub.sessions) == {a.client_id, b.client_id}
    hub.unregister(a)
    assert set(hub.sessions) == {b.client_id}


async def test_max_connections_gets_503_and_frees_on_unregister() -> None:
    hub = make_hub(max_connections=2)
    a = admit(hub)
    admit(hub)
    err = refusal(hub)
    assert (err.status, err.code) == (503, "at_capacity")
    hub.unregister(a)
    admit(hub)


async def test_rule_order_draining_before_everything() -> None:
    hub = make_hub()
    admit(hub, SUBSCRIBER, None, "192.0.2.1")
    hub.draining = True
    assert refusal(hub, PUBLISHER, "bogus", "192.0.2.1").status == 503


async def test_refused_admission_leaves_nothing_registered() -> None:
    hub = make_hub()
    for args in [(PUBLISHER,), (SUBSCRIBER, "bogus"), (principal(channels=[]), "pdfm")]:
        refusal(hub, *args, "192.0.2.1")
    assert hub.sessions == {}
    admit(hub, SUBSCRIBER, None, "192.0.2.1")


# -- confirmation --------------------------------------------------------------------------


async def test_confirmation_is_the_first_frame_exactly() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm,health,orchestrator")
    hub.publish("pdfm", event("pdfm"))
    frames = await queued(s)
    confirmation = frames[0]
    assert list(confirmation) == ["id", "event_type", "timestamp", "message", "body"]
    assert HEX64.match(confirmation["id"])
    assert TIMESTAMP.match(confirmation["timestamp"])
    assert confirmation["event_type"] == "global"
    assert confirmation["message"] == (
        "WebSocket connection established subscribed to global by default"
    )
    assert confirmation["message"] == CONFIRMATION
    assert list(confirmation["body"]) == ["client_id", "subscriptions"]
    assert confirmation["body"] == {
        "client_id": s.client_id,
        "subscriptions": ["pdfm", "health", "orchestrator", "global"],
    }
    assert [f["message"] for f in frames] == [CONFIRMATION, "EVT"]


async def test_confirmation_without_event_types_lists_global_only() -> None:
    s = admit(make_hub())
    (confirmation,) = await queued(s)
    assert confirmation["body"]["subscriptions"] == ["global"]


async def test_each_connection_gets_its_own_client_id() -> None:
    hub = make_hub()
    ids = {admit(hub).client_id for _ in range(20)}
    assert len(ids) == 20


# -- routing -------------------------------------------------------------------------------


async def test_channel_event_never_reaches_a_global_only_session() -> None:
    hub = make_hub()
    global_only = admit(hub)
    pdfm = admit(hub, SUBSCRIBER, "pdfm")
    await queued(global_only)
    await queued(pdfm)
    assert hub.publish("pdfm", event("pdfm", "VM_STATE_CHANGED")) == 1
    assert await queued(global_only) == []
    assert await messages(pdfm) == ["VM_STATE_CHANGED"]


async def test_global_event_reaches_everyone() -> None:
    hub = make_hub()
    sessions = [admit(hub), admit(hub, SUBSCRIBER, "pdfm"), admit(hub, ADMIN, "health,system")]
    for s in sessions:
        await queued(s)
    assert hub.publish("global", event("global", "MAINTENANCE")) == 3
    for s in sessions:
        assert await messages(s) == ["MAINTENANCE"]


async def test_channel_event_reaches_every_subscriber_of_it_only() -> None:
    hub = make_hub()
    pdfm = [admit(hub, SUBSCRIBER, "pdfm"), admit(hub, SUBSCRIBER, "orchestrator,pdfm")]
    orch = admit(hub, SUBSCRIBER, "orchestrator")
    for s in [*pdfm, orch]:
        await queued(s)
    hub.publish("pdfm", event("pdfm"))
    assert [await messages(s) for s in pdfm] == [["EVT"], ["EVT"]]
    assert await queued(orch) == []


async def test_targeted_event_reaches_only_the_target() -> None:
    hub = make_hub()
    a, b = admit(hub, SUBSCRIBER, "pdfm"), admit(hub, SUBSCRIBER, "pdfm")
    await queued(a)
    await queued(b)
    assert hub.publish("pdfm", event("pdfm", "FOR_B"), target=b) == 1
    assert await queued(a) == []
    assert await messages(b) == ["FOR_B"]


async def test_the_same_encoded_frame_is_handed_to_every_subscriber() -> None:
    hub = make_hub()
    a, b = admit(hub, SUBSCRIBER, "pdfm"), admit(hub, SUBSCRIBER, "pdfm")
    await queued(a)
    await queued(b)
    frame = event("pdfm")
    hub.publish("pdfm", frame)
    (got_a,) = a.mailbox.take(5)
    (got_b,) = b.mailbox.take(5)
    assert got_a is frame and got_b is frame


async def test_publish_order_is_preserved() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm,orchestrator")
    await queued(s)
    sent = [f"E{i}" for i in range(200)]
    for i, name in enumerate(sent):
        hub.publish("pdfm" if i % 2 else "orchestrator", event("pdfm", name))
    assert await messages(s) == sent


async def test_unregistered_session_receives_nothing() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    hub.unregister(s)
    assert hub.publish("pdfm", event("pdfm")) == 0
    assert hub.publish("global", event("global")) == 0


async def test_disconnect_overflow_asks_the_session_to_close_with_1013() -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    slow = admit(hub, SUBSCRIBER, "pdfm")  # holds the confirmation: 1 of 2
    fast = admit(hub, SUBSCRIBER, "pdfm")
    hub.publish("pdfm", event("pdfm"))
    await queued(fast)
    assert slow.close_code is None
    hub.publish("pdfm", event("pdfm"))  # slow: third frame, over capacity
    assert slow.close_code == 1013
    assert slow.mailbox.closed
    assert fast.close_code is None
    assert await messages(fast) == ["EVT"]


async def test_drop_oldest_overflow_keeps_the_session_open() -> None:
    hub = make_hub(queue_size=2)
    s = admit(hub, SUBSCRIBER, "pdfm")
    for i in range(5):
        hub.publish("pdfm", event("pdfm", f"E{i}"))
    assert s.close_code is None
    assert s.mailbox.dropped_total == 4  # the confirmation and E0-E2
    assert await messages(s) == ["E3", "E4"]


async def test_hub_counts_drop_oldest_drops() -> None:
    hub = make_hub(queue_size=2)
    s = admit(hub, SUBSCRIBER, "pdfm")
    for i in range(5):
        hub.publish("pdfm", event("pdfm", f"E{i}"))
    assert hub.dropped == 4  # the confirmation and E0..E2, while the session lives
    hub.unregister(s)
    assert hub.dropped == 6  # and E3 + E4, discarded unwritten at the end


async def test_hub_counts_every_frame_lost_to_a_disconnect_overflow() -> None:
    hub = make_hub(queue_size=2, slow_consumer="disconnect")
    s = admit(hub, SUBSCRIBER, "pdfm")
    hub.publish("pdfm", event("pdfm"))
    hub.publish("pdfm", event("pdfm"))
    hub.unregister(s)
    assert s.mailbox.dropped_total == 3
    assert hub.dropped == 3


async def test_close_all_asks_every_session_to_close() -> None:
    hub = make_hub()
    sessions = [admit(hub) for _ in range(3)]
    hub.close_all(1001, "server shutting down")
    for s in sessions:
        assert (s.close_code, s.close_reason) == (1001, "server shutting down")
        assert s.mailbox.closed
        # what was queued (the confirmation) is still there to be flushed
        assert len(s.mailbox) == 1


async def test_first_close_request_wins() -> None:
    s = admit(make_hub())
    s.request_close(1013, "slow")
    s.request_close(1001, "shutdown")
    assert (s.close_code, s.close_reason) == (1013, "slow")


async def test_wait_empty_returns_once_every_session_is_gone() -> None:
    hub = make_hub()
    await hub.wait_empty()  # nobody connected yet
    a, b = admit(hub), admit(hub)
    emptied = trio.Event()

    async def waiter() -> None:
        await hub.wait_empty()
        emptied.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        hub.unregister(a)
        await trio.testing.wait_all_tasks_blocked()
        assert not emptied.is_set()
        hub.unregister(b)
    assert emptied.is_set()


# -- unsubscribe ---------------------------------------------------------------------------


async def test_unsubscribe_removes_channels_and_stops_delivery() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm,health,orchestrator")
    await queued(s)
    result = unsubscribe(hub, SUBSCRIBER, s.client_id, ["PDFM ", "health"])
    assert result.client_id == s.client_id
    assert result.unsubscribed == ["pdfm", "health"]
    assert result.ignored == []
    assert result.subscriptions == ["orchestrator", "global"]
    assert s.subscriptions == ["orchestrator", "global"]
    await queued(s)  # the "unsubscribed" notice
    assert hub.publish("pdfm", event("pdfm")) == 0
    hub.publish("orchestrator", event("orchestrator", "STILL_HERE"))
    assert await messages(s) == ["STILL_HERE"]


async def test_unsubscribe_notifies_the_client() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm,health")
    await queued(s)
    unsubscribe(hub, SUBSCRIBER, s.client_id, ["pdfm"])
    (notice,) = await queued(s)
    assert notice["event_type"] == "global"
    assert notice["client_id"] == s.client_id
    assert notice["body"] == {"unsubscribed": ["pdfm"], "subscriptions": ["health", "global"]}


async def test_global_listed_with_others_is_ignored_and_reported() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    result = unsubscribe(hub, SUBSCRIBER, s.client_id, ["global", "pdfm"])
    assert result.unsubscribed == ["pdfm"]
    assert result.ignored == ["global"]
    assert result.subscriptions == ["global"]
    assert hub.publish("global", event("global")) == 1


async def test_channel_not_subscribed_is_ignored() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    result = unsubscribe(hub, SUBSCRIBER, s.client_id, ["health"])
    assert (result.unsubscribed, result.ignored) == ([], ["health"])
    assert result.subscriptions == ["pdfm", "global"]


async def test_removing_every_channel_leaves_global() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm,health")
    result = unsubscribe(hub, SUBSCRIBER, s.client_id, ["pdfm", "health"])
    assert result.subscriptions == ["global"]


def unsubscribe_error(hub: Hub, who: Any, client_id: str, channels: list[str]) -> HubError:
    with pytest.raises(HubError) as info:
        unsubscribe(hub, who, client_id, channels)
    return info.value


async def test_unsubscribe_unknown_channel_is_400() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    err = unsubscribe_error(hub, SUBSCRIBER, s.client_id, ["pdfm", "bogus"])
    assert (err.status, err.code) == (400, "unknown_channel")
    assert "'bogus'" in err.message
    assert s.subscriptions == ["pdfm", "global"]  # nothing removed


@pytest.mark.parametrize("channels", [["global"], ["GLOBAL", " global"]])
async def test_unsubscribe_only_global_is_400(channels: list[str]) -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    err = unsubscribe_error(hub, SUBSCRIBER, s.client_id, channels)
    assert err.status == 400
    assert "'global' cannot be unsubscribed" in err.message


@pytest.mark.parametrize("channels", [[], [""], ["  "]])
async def test_unsubscribe_nothing_is_400(channels: list[str]) -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    assert unsubscribe_error(hub, SUBSCRIBER, s.client_id, channels).status == 400


async def test_unsubscribe_unknown_client_is_404() -> None:
    hub = make_hub()
    err = unsubscribe_error(hub, SUBSCRIBER, str(uuid.uuid4()), ["pdfm"])
    assert (err.status, err.code) == (404, "unknown_client")


async def test_unsubscribe_after_disconnect_is_404() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    hub.unregister(s)
    assert unsubscribe_error(hub, SUBSCRIBER, s.client_id, ["pdfm"]).status == 404


async def test_unsubscribing_another_principals_client_is_403() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    bob = principal("bob", ["subscriber", "publisher"])
    err = unsubscribe_error(hub, bob, s.client_id, ["pdfm"])
    assert (err.status, err.code) == (403, "forbidden")
    assert s.subscriptions == ["pdfm", "global"]


async def test_admin_may_unsubscribe_anyone() -> None:
    hub = make_hub()
    s = admit(hub, SUBSCRIBER, "pdfm")
    result = unsubscribe(hub, ADMIN, s.client_id, ["pdfm"])
    assert result.unsubscribed == ["pdfm"]
    assert hub.publish("pdfm", event("pdfm")) == 0
