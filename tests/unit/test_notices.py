"""hubd.protocol.notices builds the same bytes as the hand-written envelopes it replaced:
each constructor is compared with the former construction (id and timestamp fixed)."""

from __future__ import annotations

import itertools
import json

import pytest

from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL, HEALTH, SYSTEM
from hubd.protocol.envelope import Envelope, encode_bytes

ID = "a" * 64
REF = "b" * 64
NOW = "2026-11-28T14:35:32.752795Z"
CLIENT = "a11f36b1-ce58-47cf-809a-bb2e155e6fa5"


@pytest.fixture(autouse=True)
def _fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = itertools.cycle([ID, REF])
    # The first fresh id is the envelope's, a second one (a reply without a frame id)
    # its ref_id; whichever is drawn first, both are checked below by value.
    monkeypatch.setattr(notices, "new_id", lambda: next(ids))
    monkeypatch.setattr(notices, "utc_timestamp", lambda: NOW)


def _old_notice(message: str, body: object) -> bytes:
    # hubd.core.hub.notice_frame and Hub._replay_complete, before.
    return encode_bytes(
        Envelope(
            id=ID,
            event_type=GLOBAL,
            timestamp=NOW,
            message=message,
            body=body,
            client_id=CLIENT,
        )
    )


def _old_reply(channel: str, message: str, ref_id: str, body: object) -> bytes:
    # hubd.core.session._reply, before.
    return encode_bytes(
        Envelope(
            id=ID,
            ref_id=ref_id,
            event_type=channel,
            timestamp=NOW,
            message=message,
            body=body,
            client_id=CLIENT,
        )
    )


def _same_apart_from_fresh_ids(new: bytes, old: bytes) -> None:
    """Byte for byte, once the two fresh ids (drawn in either order) are aligned."""
    assert new.replace(REF.encode(), ID.encode()) == old.replace(REF.encode(), ID.encode())


@pytest.mark.parametrize("batch", [False, True])
def test_confirmation(batch: bool) -> None:
    body: dict[str, object] = {"client_id": CLIENT, "subscriptions": ["pdfm", "global"]}
    if batch:
        body["batch"] = True
    old = encode_bytes(
        Envelope(
            id=ID,
            event_type=GLOBAL,
            timestamp="2026-01-01T00:00:00.000000Z",
            message="WebSocket connection established subscribed to global by default",
            body=body,
        )
    )
    new = notices.confirmation(CLIENT, ["pdfm", "global"], batch, "2026-01-01T00:00:00.000000Z")
    assert new == old


def test_events_dropped_by_overflow() -> None:
    assert notices.events_dropped(CLIENT, 3) == _old_notice("events_dropped", {"dropped": 3})


def test_events_dropped_with_a_reason() -> None:
    assert notices.events_dropped(CLIENT, 412, notices.BACKPLANE_GAP) == _old_notice(
        "events_dropped", {"dropped": 412, "reason": "backplane_gap"}
    )


@pytest.mark.parametrize("complete", [True, False])
def test_replay_complete(complete: bool) -> None:
    assert notices.replay_complete(CLIENT, 7, complete) == _old_notice(
        "replay_complete", {"replayed": 7, "complete": complete}
    )


def test_unsubscribed() -> None:
    assert notices.unsubscribed(CLIENT, ["orchestrator"], ["system", "global"]) == _old_notice(
        "unsubscribed", {"unsubscribed": ["orchestrator"], "subscriptions": ["system", "global"]}
    )


def test_pong_echoes_the_frame_id() -> None:
    assert notices.pong(CLIENT, "42") == _old_reply(HEALTH, "pong", "42", None)


def test_client_id_reply() -> None:
    assert notices.client_id_reply(CLIENT, "7") == _old_reply(
        SYSTEM, "client-id", "7", {"client-id": CLIENT}
    )


def test_error_echoes_the_frame_id() -> None:
    assert notices.error(CLIENT, "x", "frame is not valid JSON") == _old_reply(
        GLOBAL, "error", "x", {"error": "frame is not valid JSON"}
    )


def test_replies_to_a_frame_without_id_get_a_fresh_ref_id() -> None:
    new = notices.error(CLIENT, None, "rate limit")
    _same_apart_from_fresh_ids(new, _old_reply(GLOBAL, "error", REF, {"error": "rate limit"}))
    parsed = json.loads(new)
    assert {parsed["id"], parsed["ref_id"]} == {ID, REF}
    _same_apart_from_fresh_ids(notices.pong(CLIENT, None), _old_reply(HEALTH, "pong", REF, None))


def test_published_event_envelope() -> None:
    # hubd.core.publishing.publish_checked and hubd.backplane.redis.wire.publish_args.
    for client_id in (None, CLIENT):
        old = Envelope(
            id=ID,
            event_type="pdfm",
            timestamp=NOW,
            message="build done",
            body={"n": 1},
            client_id=client_id,
        )
        new = notices.envelope("pdfm", "build done", {"n": 1}, client_id=client_id, id=ID)
        assert encode_bytes(new) == encode_bytes(old)


def test_the_names_are_the_documented_ones() -> None:
    assert {"error", "events_dropped", "unsubscribed", "replay_complete"} == notices.NOTICES
    assert (notices.PING, notices.PONG, notices.CLIENT_ID) == ("ping", "pong", "client-id")
    assert notices.BACKPLANE_GAP == "backplane_gap"
    assert notices.NOTICES < notices.VOCABULARY
