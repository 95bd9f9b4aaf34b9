"""Bounds on what one request can make hubd do: channel lists (counted and capped, checked
in linear time), JSON nesting (refused past `MAX_JSON_DEPTH` before decoding), client
values quoted at most `QUOTE_LIMIT` characters in errors and logs, and refusals logged at
a bounded rate (on trio's virtual clock)."""

from __future__ import annotations

import json
import logging
import random
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
from trio.testing import MockClock

from hubd.core import publishing
from hubd.core.admission import check_owner, check_since, unknown_client
from hubd.core.errors import HubError
from hubd.core.publishing import decode_request, publish_request
from hubd.core.unsubscribe import requested_channels, unsubscribe
from hubd.logs import RateLimitedLog
from hubd.protocol import envelope
from hubd.protocol.channels import (
    BUILTIN_CHANNELS,
    UNKNOWN_LISTED,
    TooManyChannelsError,
    UnknownChannelError,
    normalize,
    parse_event_types,
)
from hubd.protocol.envelope import FrameError, decode_client_frame
from hubd.protocol.jsondepth import MAX_JSON_DEPTH, too_deep
from hubd.protocol.quoting import QUOTE_LIMIT, quoted
from hubd.web import ws
from hubd.web.context import WebContext

from .conftest import ADMIN, SUBSCRIBER, admit, connect, make_hub, principal

KNOWN = frozenset(BUILTIN_CHANNELS)
PING = {"event_type": "health", "message": "ping"}
# A client value far longer than any message may repeat.
HUGE = "x" * 100_000
# Room for a message's own words around one quoted value.
SHORT = QUOTE_LIMIT + 300


def nested(depth: int, inner: str = "1", kinds: str = "[") -> str:
    """JSON nesting `depth` arrays/objects around `inner`, cycling through `kinds`."""
    opens, closes = [], []
    for level in range(depth):
        if kinds[level % len(kinds)] == "[":
            opens.append("[")
            closes.append("]")
        else:
            opens.append('{"k":')
            closes.append("}")
    return "".join(opens) + inner + "".join(reversed(closes))


def frame_with(value: str) -> str:
    """A client frame (a ping) carrying `value` in an extra key, which is tolerated."""
    return '{"event_type":"health","message":"ping","meta":' + value + "}"


def event_with_body(body: str) -> bytes:
    return ('{"event_type":"pdfm","message":"M","body":' + body + "}").encode()


# -- channel lists ---------------------------------------------------------------------------


def test_normalize_counts_names_before_reading_them() -> None:
    with pytest.raises(TooManyChannelsError) as info:
        # Unknown names too: the count comes first, so no name is looked at.
        normalize(["pdfm"] * 3 + ["bogus"] * 2, KNOWN, limit=4)
    assert (info.value.count, info.value.limit) == (5, 4)
    # Empty items are not names ("a,,b" lists two), duplicates are.
    assert normalize(["pdfm", "", "", "health"], KNOWN, limit=2) == ["pdfm", "health"]
    assert parse_event_types("pdfm,,,health", KNOWN, limit=2) == ["pdfm", "health", "global"]
    with pytest.raises(TooManyChannelsError):
        parse_event_types("pdfm,pdfm,pdfm", KNOWN, limit=2)


def test_normalize_takes_linear_time() -> None:
    # Was a list membership test per name: 20,000 distinct names took seconds (40,000:
    # 10.8 s in the server). Linear, this is a few milliseconds; the bound only catches a
    # return to quadratic time.
    names = [f"name-{i}" for i in range(20_000)]
    started = time.perf_counter()
    with pytest.raises(UnknownChannelError) as info:
        normalize(names, KNOWN)
    assert time.perf_counter() - started < 0.5
    assert len(info.value.unknown) == 20_000


def test_unknown_channel_message_quotes_a_few_names_and_counts_the_rest() -> None:
    names = [f"bogus{i}-" + "y" * 1000 for i in range(12)]
    with pytest.raises(UnknownChannelError) as info:
        normalize(["pdfm", *names], KNOWN)
    message = str(info.value)
    assert info.value.unknown == names  # every one is still there for the caller
    for name in names[:UNKNOWN_LISTED]:
        assert quoted(name) in message
    assert "'bogus5-" not in message
    assert f"and {12 - UNKNOWN_LISTED} more" in message
    assert len(message) < UNKNOWN_LISTED * (QUOTE_LIMIT + 10) + 200
    # A short list reads as before.
    with pytest.raises(UnknownChannelError) as single:
        normalize(["bogus"], KNOWN)
    assert str(single.value).startswith("unknown channel 'bogus'; valid channels are: ")


async def test_subscribe_over_the_channel_cap_is_refused_with_400() -> None:
    hub = make_hub(max_channels_per_request=3)
    with pytest.raises(HubError) as info:
        admit(hub, SUBSCRIBER, "pdfm,health,orchestrator,system")
    err = info.value
    assert (err.status, err.code) == (400, "too_many_channels")
    assert "4 channel names" in err.message
    assert "at most 3" in err.message
    assert "hub.max_channels_per_request" in err.message
    assert hub.sessions == {}
    assert admit(hub, SUBSCRIBER, "pdfm,health,orchestrator").subscriptions[-1] == "global"


async def test_subscribe_cap_defaults_to_64_and_counts_a_huge_query_quickly() -> None:
    hub = make_hub()
    admit(hub, SUBSCRIBER, ",".join(["pdfm"] * 64))
    query = ",".join(f"c{i}" for i in range(12_000))
    with pytest.raises(HubError) as info:
        admit(hub, SUBSCRIBER, query)
    err = info.value
    assert (err.status, err.code) == (400, "too_many_channels")
    assert "12000 channel names" in err.message
    assert len(err.message) < 200  # was 109 KB, every name listed


async def test_unsubscribe_over_the_channel_cap_is_refused_before_the_client_lookup() -> None:
    hub = make_hub()
    names = [f"n{i}" for i in range(40_000)]
    started = time.perf_counter()
    with pytest.raises(HubError) as info:
        unsubscribe(hub, ADMIN, "no-such-client", names)
    assert time.perf_counter() - started < 0.5  # was 10.8 s
    err = info.value
    assert (err.status, err.code) == (400, "too_many_channels")
    assert "40000 channel names" in err.message
    assert "at most 64" in err.message
    with pytest.raises(HubError) as info:
        requested_channels(hub, ["pdfm"] * 65)
    assert info.value.code == "too_many_channels"
    assert requested_channels(hub, ["pdfm"] * 64) == ["pdfm"]


# -- JSON depth ------------------------------------------------------------------------------


def _depth(value: Any) -> int:
    """Nesting of a decoded JSON value: the outermost array or object is level 1."""
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _scanned_depth(text: str) -> int:
    """Deepest running depth a decoder could reach reading `text` (malformed or not):
    strings and escapes honoured, a stray close at depth 0 counted as nothing, and the
    end at a backslash outside a string (where every decoder stops)."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if c == "\\" and not in_string:
            break
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(depth - 1, 0)
    return deepest


_TRICKY = ["[", "]", "{", "}", '"', "\\", "\\\\", '\\"', "[[[", "]}", "é", "\n"]


def _random_json(rng: random.Random, depth: int) -> Any:
    kind = rng.random()
    if depth == 0 or kind < 0.3:
        return rng.choice([1, 2.5, None, True, "".join(rng.choices(_TRICKY, k=rng.randint(0, 6)))])
    items = [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if kind < 0.65:
        return items
    return {
        "".join(rng.choices(_TRICKY, k=rng.randint(0, 4))) + str(i): v for i, v in enumerate(items)
    }


def test_too_deep_is_exact_for_json() -> None:
    rng = random.Random(20261204)
    for _ in range(3000):
        value = _random_json(rng, rng.randint(0, 9))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5)
        depth = _depth(value)
        for limit in (1, 2, 3, 5, 8):
            assert too_deep(text, limit) == (depth > limit), (text, limit, depth)
            assert too_deep(text.encode(), limit) == (depth > limit), (text, limit, depth)


def test_too_deep_never_misses_a_deep_prefix_in_malformed_input() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choices(["[", "[", "{", "]", "}", '"', "\\", "a", ","], k=60))
        for limit in (2, 4, 6):
            if not too_deep(text, limit):
                assert _scanned_depth(text) <= limit, (text, limit)


def test_brackets_inside_strings_do_not_count() -> None:
    assert not too_deep(json.dumps(["[" * 500, "{" * 500, '\\"[[[[', "\\" * 7 + "[" * 99]))
    assert not too_deep(json.dumps({"[" * 100: "]" * 100}))
    # An escaped backslash does not escape the quote after it: the string ends there.
    assert too_deep('["\\\\"' + "," + "[" * 70 + "]" * 70 + "]")


def test_limit_is_64_levels_counting_the_outermost() -> None:
    assert MAX_JSON_DEPTH == 64
    for kinds in ("[", "{", "[{", "{[["):
        assert not too_deep(nested(64, kinds=kinds))
        assert too_deep(nested(65, kinds=kinds))
    # Unclosed brackets count as nesting: a decoder reads that deep before it fails.
    assert too_deep("[" * 65)
    assert not too_deep("[" * 64)
    assert too_deep("[" * 5000 + "}")


@pytest.mark.parametrize(
    "unit",
    [
        "[" * 64 + "]" * 64 + ",",  # as deep as allowed, as often as fits
        "[],",
        '{"":{}},',
        '"[",[],',  # strings full of brackets between real ones
        '"\\"[",',
        "".join("[" * k + "]" * k for k in range(1, 64)) + ",",
        "[",  # too deep
    ],
)
def test_too_deep_stays_linear_on_a_mebibyte(unit: str) -> None:
    data = ("[" + unit * ((1 << 20) // len(unit)) + "]").encode()
    too_deep(data)  # the pattern is compiled on first use
    started = time.perf_counter()
    too_deep(data)
    # About 10-15 ms here; the bound only catches a return to work per level per byte.
    assert time.perf_counter() - started < 0.5


def test_a_deep_frame_is_a_frame_error() -> None:
    assert decode_client_frame(frame_with(nested(MAX_JSON_DEPTH - 1))).message == "ping"
    for value in (nested(MAX_JSON_DEPTH), nested(1100), "[" * 5000 + "}"):
        with pytest.raises(FrameError, match="more than 64 levels deep; at most 64"):
            decode_client_frame(frame_with(value))


def test_recursion_in_the_frame_decoder_is_a_frame_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The backstop, for input the depth check would let through.
    monkeypatch.setattr(envelope, "too_deep", lambda data: False)
    with pytest.raises(FrameError, match="more than 64 levels deep"):
        decode_client_frame(frame_with(nested(5000)))


async def test_a_deep_frame_gets_an_error_event_and_the_connection_stays_open(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    client = await connect(nursery, make_hub(), SUBSCRIBER, "health")
    await client.send(frame_with(nested(1100))[:-1] + ',"id":"deep"}')
    reply = await client.receive()
    assert (reply["event_type"], reply["message"]) == ("global", "error")
    assert "more than 64 levels deep" in reply["body"]["error"]
    await client.send({**PING, "id": "still-here"})
    assert (await client.receive())["ref_id"] == "still-here"
    assert client.transport.closed is None


def test_a_deep_publish_body_is_a_400() -> None:
    events, batch = decode_request(event_with_body(nested(MAX_JSON_DEPTH - 1)))
    assert (len(events), batch) == (1, False)
    for body in (event_with_body(nested(MAX_JSON_DEPTH)), event_with_body(nested(1100))):
        with pytest.raises(HubError) as info:
            decode_request(body)
        assert (info.value.status, info.value.code) == (400, "too_deep")
        assert "more than 64 levels deep; at most 64 are allowed" in info.value.message


def test_recursion_in_the_publish_decoder_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publishing, "too_deep", lambda data: False)
    with pytest.raises(HubError) as info:
        decode_request(event_with_body(nested(5000)))
    assert (info.value.status, info.value.code) == (400, "too_deep")


# -- quoting client values -------------------------------------------------------------------


def test_quoted_is_repr_up_to_the_limit_then_cut() -> None:
    assert quoted("pdfm") == "'pdfm'"
    assert quoted("a\nb'") == repr("a\nb'")
    assert quoted("y" * QUOTE_LIMIT) == repr("y" * QUOTE_LIMIT)
    assert quoted("y" * (QUOTE_LIMIT + 1)) == "'" + "y" * QUOTE_LIMIT + "…'"
    assert quoted(HUGE, limit=5) == "'xxxxx…'"
    assert quoted(7) == "'7'"


def test_core_errors_quote_client_values_briefly() -> None:
    messages = [unknown_client(HUGE).message]
    with pytest.raises(HubError) as info:
        check_owner(SUBSCRIBER, "someone-else", HUGE)
    messages.append(info.value.message)
    with pytest.raises(HubError) as info:
        check_since(HUGE)
    messages.append(info.value.message)
    for message in messages:
        assert quoted(HUGE) in message
        assert len(message) < SHORT


def test_origin_and_query_values_are_quoted_briefly() -> None:
    with pytest.raises(HubError) as info:
        ws.check_origin("https://" + HUGE, "hub.example", [])
    assert (info.value.status, info.value.code) == (403, "forbidden_origin")
    assert len(info.value.message) < SHORT
    with pytest.raises(HubError) as info:
        ws._flag({"batch": HUGE}, "batch")
    assert len(info.value.message) < SHORT


async def test_publish_errors_quote_client_values_briefly() -> None:
    hub = make_hub()
    target = admit(hub, SUBSCRIBER, "orchestrator")
    cases = [
        {"event_type": HUGE, "message": "M"},
        {"event_type": "pdfm", "message": "M", "client_id": HUGE},
        {"event_type": "pdfm", "message": "M", "client_id": target.client_id},  # 409
        {"event_type": "pdfm", "message": "M", HUGE: 1},
        {"event_type": "pdfm", "message": "M", "`" + HUGE + "`": 1},
    ]
    who = principal("vm-monitor", ["publisher"])
    for case in cases:
        with pytest.raises(HubError) as info:
            publish_request(hub, who, json.dumps(case).encode())
        assert len(info.value.message) < SHORT, (info.value.code, info.value.message[:300])


# -- rate-limited refusal log ----------------------------------------------------------------

LOGGER = "hubd.test.refusals"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_rate_limited_log_writes_at_most_the_limit_then_the_count(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    limited = RateLimitedLog(logging.getLogger(LOGGER), "rejected handshakes")
    start = trio.current_time()
    written = [limited.event(logging.INFO, "rejected", n=n) for n in range(25)]
    assert written == [True] * 20 + [False] * 5
    assert lines(caplog) == [f"rejected n={n}" for n in range(20)]
    assert limited.due == start + 10.0
    # No refusal follows: the timer writes the count once the interval is over.
    await trio.sleep(10.5)
    assert lines(caplog)[20:] == ["suppressed 5 rejected handshakes in the last 10 s"]
    assert limited.due is None
    # A new interval: lines are written again.
    assert limited.event(logging.INFO, "rejected", n=25)
    assert lines(caplog)[-1] == "rejected n=25"


async def test_rate_limited_log_counts_with_the_next_line_of_a_later_interval(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    limited = RateLimitedLog(logging.getLogger(LOGGER), "refusals", limit=2, interval=5.0)
    for n in range(4):
        limited.event(logging.INFO, "rejected", n=n)
        await trio.sleep(1.0)
    # The count comes before the first line of the next interval (it is written by
    # whichever comes first: that line, or the timer at the interval's end).
    await trio.sleep_until(limited.due or 0.0)
    limited.event(logging.WARNING, "rejected", n=4)
    assert lines(caplog) == [
        "rejected n=0",
        "rejected n=1",
        "suppressed 2 refusals in the last 5 s",
        "rejected n=4",
    ]
    assert [r.levelno for r in caplog.records if r.name == LOGGER][2] == logging.INFO


async def test_refused_handshakes_are_logged_at_a_bounded_rate(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="hubd.connections")
    monkeypatch.setattr(
        ws, "_refusal_log", RateLimitedLog(ws.log, "rejected handshakes", limit=20, interval=10)
    )
    hub = make_hub()
    ctx = cast(WebContext, SimpleNamespace(hub=hub))
    error = HubError(401, "unauthorized", "the token presented is not valid")
    for n in range(50):
        ws._rejected(ctx, f"192.0.2.{n}", error)
    assert hub.rejected[401] == 50  # every refusal is counted for /metrics
    logged = [r.getMessage() for r in caplog.records if r.name == "hubd.connections"]
    assert len(logged) == 20
    assert all(line.startswith("rejected ip=192.0.2.") for line in logged)
    await trio.sleep(ws.REFUSALS_INTERVAL + 0.5)
    logged = [r.getMessage() for r in caplog.records if r.name == "hubd.connections"]
    assert logged[20:] == ["suppressed 30 rejected handshakes in the last 10 s"]


async def test_frame_errors_quote_client_values_briefly() -> None:
    from hubd.core.client_frames import handle_frame

    from .conftest import make_hub, principal

    hub = make_hub()
    session = hub.admit(principal("alice", ["subscriber"]), "127.0.0.1", "health,system")
    session.mailbox.take(10)
    long = "x" * 5000
    for kind in ("health", "system", "nope"):
        field = "event_type" if kind == "nope" else "message"
        frame = {"event_type": kind, "message": "m", field: long}
        assert not handle_frame(session, json.dumps(frame))
        (reply,) = session.mailbox.take(10)
        error = json.loads(reply.payload)["body"]["error"]
        assert "x" * 120 + "…" in error and "x" * 121 not in error, error
