"""The wire format: channel lists, envelopes, ids, timestamps and client frames."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from hubd.protocol.channels import (
    BUILTIN_CHANNELS,
    UnknownChannelError,
    normalize,
    parse_event_types,
    valid_channel_name,
)
from hubd.protocol.envelope import (
    Envelope,
    FrameError,
    decode_client_frame,
    decode_envelope,
    encode,
    format_utc,
    new_id,
    utc_timestamp,
)

KNOWN = frozenset(BUILTIN_CHANNELS) | {"backups"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")
RFC3339_UTC_MICROS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


# -- channels ------------------------------------------------------------------------------


def test_builtin_channels() -> None:
    assert set(BUILTIN_CHANNELS) == {"global", "pdfm", "orchestrator", "health", "system"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("pdfm,health,orchestrator", ["pdfm", "health", "orchestrator", "global"]),
        (" pdfm , HEALTH ", ["pdfm", "health", "global"]),
        ("Pdfm,pdfm,PDFM", ["pdfm", "global"]),
        ("orchestrator,pdfm", ["orchestrator", "pdfm", "global"]),
        ("global,pdfm,global", ["pdfm", "global"]),
        ("GLOBAL", ["global"]),
        ("pdfm,,health,", ["pdfm", "health", "global"]),
        ("backups", ["backups", "global"]),
        ("", ["global"]),
        ("  ", ["global"]),
        (None, ["global"]),
    ],
)
def test_parse_event_types(query: str | None, expected: list[str]) -> None:
    assert parse_event_types(query, KNOWN) == expected


def test_unknown_channels_are_all_named_with_the_valid_ones() -> None:
    with pytest.raises(UnknownChannelError) as info:
        parse_event_types("pdfm,bogus,Nope", KNOWN)
    msg = str(info.value)
    assert "'bogus'" in msg and "'nope'" in msg
    assert info.value.unknown == ["bogus", "nope"]
    assert msg.endswith("valid channels are: backups, global, health, orchestrator, pdfm, system")


def test_normalize_keeps_first_seen_order_without_adding_global() -> None:
    assert normalize(["Health", "pdfm ", "health"], KNOWN) == ["health", "pdfm"]
    assert normalize([], KNOWN) == []


@pytest.mark.parametrize("name", ["pdfm", "a", "x" * 64, "net.v2", "a_b-c", "9lives"])
def test_valid_channel_names(name: str) -> None:
    assert valid_channel_name(name)


@pytest.mark.parametrize("name", ["", "x" * 65, "Pdfm", "-a", ".a", "a b", "a/b", "é"])
def test_invalid_channel_names(name: str) -> None:
    assert not valid_channel_name(name)


# -- envelopes -----------------------------------------------------------------------------


def test_envelope_field_order_is_wire_order() -> None:
    text = encode(
        Envelope(
            client_id="c",
            body={"k": 1},
            message="m",
            timestamp="t",
            event_type="pdfm",
            ref_id="r",
            id="i",
        )
    )
    assert list(json.loads(text)) == [
        "id",
        "ref_id",
        "event_type",
        "timestamp",
        "message",
        "body",
        "client_id",
    ]
    assert text == (
        '{"id":"i","ref_id":"r","event_type":"pdfm","timestamp":"t","message":"m",'
        '"body":{"k":1},"client_id":"c"}'
    )


def test_null_ref_id_body_and_client_id_are_omitted() -> None:
    text = encode(Envelope(id="i", event_type="pdfm", timestamp="t", message="m"))
    assert text == '{"id":"i","event_type":"pdfm","timestamp":"t","message":"m"}'


@pytest.mark.parametrize("body", [{}, [], 0, False, ""])
def test_falsy_but_present_bodies_are_kept(body: object) -> None:
    decoded = json.loads(
        encode(Envelope(id="i", event_type="g", timestamp="t", message="m", body=body))
    )
    assert decoded["body"] == body


def test_decode_envelope_round_trips() -> None:
    env = Envelope(id="i", ref_id="r", event_type="g", timestamp="t", message="m", body=[1])
    assert decode_envelope(encode(env)) == env


def test_new_id_is_64_lowercase_hex_and_unique() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(HEX64.match(i) for i in ids)


def test_utc_timestamp_is_rfc3339_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    stamp = utc_timestamp()
    after = datetime.now(UTC)
    assert RFC3339_UTC_MICROS.match(stamp), stamp
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(microseconds=1) <= parsed <= after


@pytest.mark.parametrize(
    "at",
    [
        0.0,
        1_764_892_800.0,  # a midnight
        1_764_892_799.9999996,  # rounds up into the next second (and the next day)
        1_764_892_799.9999994,
        1_764_892_800.0000005,
        1_764_892_801.25,
        1_764_892_801.500000,  # the same second again: the cached part is reused
        4_102_444_799.999999,
    ],
)
def test_format_utc_writes_what_datetime_writes(at: float) -> None:
    expected = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_utc(at) == expected


def test_format_utc_agrees_with_datetime_on_random_instants() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        at = rng.uniform(1.7e9, 1.8e9)
        assert format_utc(at) == datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- client frames -------------------------------------------------------------------------


def test_client_frame_decodes_with_and_without_id() -> None:
    frame = decode_client_frame('{"event_type":"health","message":"ping","id":"abc"}')
    assert (frame.event_type, frame.message, frame.id) == ("health", "ping", "abc")
    assert decode_client_frame('{"event_type":"health","message":"ping"}').id is None


def test_client_frame_tolerates_extra_keys() -> None:
    frame = decode_client_frame('{"event_type":"health","message":"ping","trace":{"x":1}}')
    assert frame.message == "ping"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ('{"event_type":"health","message":"ping"', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"ping"', "must be a JSON object"),
        ("42", "must be a JSON object"),
        ('{"event_type":"health"}', "missing the 'message' field"),
        ('{"message":"ping"}', "missing the 'event_type' field"),
        ('{"event_type":1,"message":"ping"}', "'event_type' must be a string"),
        ('{"event_type":"health","message":null}', "'message' must be a string"),
        ('{"event_type":"health","message":"ping","id":7}', "'id' must be a string"),
    ],
)
def test_bad_client_frames_say_what_was_wrong(data: str | bytes, fragment: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_client_frame(data)
    assert fragment in str(info.value)
