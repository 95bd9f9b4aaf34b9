"""The fast write path: server text frames built once (RFC 6455 §5.2), `Frame` objects
shared by every subscriber, and opt-in batch mode (several queued events in one text frame,
newline-separated, at most `hub.batch_max` per frame) served over `MemoryTransport` on
trio's virtual clock."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import trio
from trio.testing import MockClock
from wsproto.frame_protocol import FrameProtocol, Opcode

from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.publishing import publish_request
from hubd.core.session import Session
from hubd.protocol.envelope import Envelope, encode_bytes
from hubd.protocol.notices import CONFIRMATION
from hubd.protocol.wsframe import text_frame

from .conftest import (
    PUBLISHER,
    SUBSCRIBER,
    Client,
    admit,
    fresh_ip,
    make_hub,
    publish_body,
    serve,
)

# -- text_frame: RFC 6455 §5.2 -------------------------------------------------------------


def parse_as_client(data: bytes) -> list[Any]:
    """Parse server bytes the way a client does (unmasked frames expected)."""
    proto = FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    return list(proto.received_frames())


@pytest.mark.parametrize(
    ("size", "header"),
    [
        pytest.param(0, bytes([0x81, 0]), id="0-seven-bit"),
        pytest.param(1, bytes([0x81, 1]), id="1-seven-bit"),
        pytest.param(125, bytes([0x81, 125]), id="125-seven-bit"),
        pytest.param(126, bytes([0x81, 126]) + struct.pack("!H", 126), id="126-sixteen-bit"),
        pytest.param(65535, bytes([0x81, 126, 0xFF, 0xFF]), id="65535-sixteen-bit"),
        pytest.param(
            65536, bytes([0x81, 127]) + struct.pack("!Q", 65536), id="65536-sixty-four-bit"
        ),
        pytest.param(
            1_000_000, bytes([0x81, 127]) + struct.pack("!Q", 1_000_000), id="1M-sixty-four-bit"
        ),
    ],
)
def test_text_frame_uses_the_shortest_length_form(size: int, header: bytes) -> None:
    payload = bytes(ord("a") + i % 26 for i in range(size))
    frame = text_frame(payload)
    assert frame[: len(header)] == header
    assert frame[len(header) :] == payload
    assert len(frame) == len(header) + size
    # FIN set, RSV1-3 clear, opcode 1 (text); the MASK bit is clear in the second byte.
    assert frame[0] == 0x81
    assert frame[1] & 0x80 == 0


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_a_client_parser_reads_the_text_back(size: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(size))
    frames = parse_as_client(text_frame(text.encode()))
    assert len(frames) == 1
    (parsed,) = frames
    assert parsed.opcode is Opcode.TEXT
    assert parsed.frame_finished and parsed.message_finished
    assert parsed.payload == text


def test_length_counts_utf8_bytes_not_characters() -> None:
    text = "é" * 70  # 70 characters, 140 bytes: needs the 16-bit form
    payload = text.encode()
    frame = text_frame(payload)
    assert frame[:4] == bytes([0x81, 126]) + struct.pack("!H", 140)
    (parsed,) = parse_as_client(frame)
    assert parsed.payload == text


def test_back_to_back_frames_parse_as_separate_messages() -> None:
    texts = ['{"a":1}', "x" * 300, "y" * 70000]
    frames = parse_as_client(b"".join(text_frame(t.encode()) for t in texts))
    assert [f.payload for f in frames] == texts
    assert all(f.message_finished for f in frames)


# -- Frame: built once, cached, shared -----------------------------------------------------


def envelope_bytes(channel: str = "pdfm", message: str = "EVT", body: Any = None) -> bytes:
    return encode_bytes(
        Envelope(id="e" * 64, event_type=channel, timestamp="t", message=message, body=body)
    )


def test_frame_wire_and_text_are_derived_from_the_payload() -> None:
    payload = envelope_bytes(body={"vm": "é"})
    frame = Frame(payload)
    assert frame.text == payload.decode()
    assert frame.wire == text_frame(payload)
    assert frame.accepted_at is None


def test_frame_wire_and_text_are_cached() -> None:
    frame = Frame(envelope_bytes(body="x" * 1000))
    assert frame.wire is frame.wire
    assert frame.text is frame.text


async def test_publish_hands_the_same_frame_to_every_subscriber() -> None:
    hub = make_hub()
    sessions = [admit(hub, SUBSCRIBER, "pdfm") for _ in range(3)]
    for s in sessions:
        s.mailbox.take(1)  # the confirmation
    frame = Frame(envelope_bytes())
    assert hub.publish("pdfm", frame) == 3
    got = [(s.mailbox.take(10)) for s in sessions]
    assert all(batch == [frame] and batch[0] is frame for batch in got)
    # Built once: whoever asks first, everyone gets the very same bytes object.
    wires = [batch[0].wire for batch in got]
    assert wires[0] is wires[1] is wires[2]


async def test_publish_request_queues_one_frame_object_per_event_for_all() -> None:
    hub = make_hub()
    sessions = [admit(hub, SUBSCRIBER, "pdfm") for _ in range(3)]
    for s in sessions:
        s.mailbox.take(1)
    body = publish_body(
        {"event_type": "pdfm", "message": "A"}, {"event_type": "pdfm", "message": "B"}
    )
    publish_request(hub, PUBLISHER, body)
    batches = [s.mailbox.take(10) for s in sessions]
    for batch in batches:
        assert [json.loads(f.payload)["message"] for f in batch] == ["A", "B"]
    for i in range(2):
        first = batches[0][i]
        assert all(b[i] is first for b in batches)
        # Stamped with the time it was accepted, for the delivery-latency histogram.
        assert first.accepted_at == pytest.approx(trio.current_time(), abs=5.0)
        assert first.accepted_at is not None


# -- batch mode, served over MemoryTransport -----------------------------------------------

PING = {"event_type": "health", "message": "ping", "id": "sync"}


def seq_frame(i: int, channel: str = "pdfm") -> Frame:
    return Frame(envelope_bytes(channel, "SEQ", body=i))


def admit_batch(hub: Hub, event_types: str = "pdfm,health", *, batch: bool = True) -> Session:
    return hub.admit(SUBSCRIBER, fresh_ip(), event_types, batch=batch)


async def serve_batch(
    nursery: trio.Nursery, hub: Hub, event_types: str = "pdfm,health", *, batch: bool = True
) -> tuple[Client, dict[str, Any]]:
    """Admit and serve a session; return its client and the decoded confirmation."""
    client = await serve(nursery, hub, admit_batch(hub, event_types, batch=batch))
    raw = await client.receive_raw()
    assert "\n" not in raw, raw
    confirmation: dict[str, Any] = json.loads(raw)
    assert confirmation["message"] == CONFIRMATION
    return client, confirmation


def split(raw: str) -> list[dict[str, Any]]:
    """The events of one text frame: newline-separated JSON objects."""
    events = [json.loads(line) for line in raw.split("\n")]
    assert all(isinstance(e, dict) for e in events), raw
    return events


async def read_seqs(client: Client, total: int) -> list[list[int]]:
    """Read frames until `total` events arrived; the `body` of each, grouped by frame."""
    frames: list[list[int]] = []
    while sum(map(len, frames)) < total:
        frames.append([e["body"] for e in split(await client.receive_raw())])
    return frames


async def assert_nothing_else_queued(client: Client) -> None:
    """A ping round trip: the next frame is the pong alone, so nothing was left over."""
    await client.send(PING)
    raw = await client.receive_raw()
    assert "\n" not in raw, raw
    pong = json.loads(raw)
    assert (pong["message"], pong["ref_id"]) == ("pong", "sync")


async def test_batch_confirmation_says_batch_true(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    client, confirmation = await serve_batch(nursery, hub, "pdfm")
    assert client.session.batch is True
    assert confirmation["body"] == {
        "client_id": client.client_id,
        "subscriptions": ["pdfm", "global"],
        "batch": True,
    }
    assert list(confirmation["body"]) == ["client_id", "subscriptions", "batch"]


async def test_default_confirmation_has_no_batch_key(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub()
    session = admit(hub, SUBSCRIBER, "pdfm")  # hub.admit without batch=
    assert session.batch is False
    client = await serve(nursery, hub, session)
    confirmation = await client.receive()
    assert confirmation["body"] == {
        "client_id": client.client_id,
        "subscriptions": ["pdfm", "global"],
    }
    _, explicit = await serve_batch(nursery, hub, "pdfm", batch=False)
    assert "batch" not in explicit["body"]


async def test_queued_events_go_out_at_most_batch_max_per_frame(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=3)
    client, _ = await serve_batch(nursery, hub)
    # The writer is waiting; all seven are queued before it runs again.
    for i in range(7):
        hub.publish("pdfm", seq_frame(i))
    assert await read_seqs(client, 7) == [[0, 1, 2], [3, 4, 5], [6]]
    await assert_nothing_else_queued(client)


async def test_a_batch_frame_is_the_payloads_joined_by_newlines(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=4)
    client, _ = await serve_batch(nursery, hub)
    frames = [seq_frame(i) for i in range(4)]
    for frame in frames:
        hub.publish("pdfm", frame)
    raw = await client.receive_raw()
    assert raw == "\n".join(f.payload.decode() for f in frames)
    assert not raw.endswith("\n")


async def test_one_queued_event_is_one_frame_without_a_newline(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=3)
    client, _ = await serve_batch(nursery, hub)
    for i in range(3):
        frame = seq_frame(i)
        hub.publish("pdfm", frame)
        before = trio.current_time()
        raw = await client.receive_raw()
        # Batching adds no latency: the lone event is written at once, not held back
        # waiting for company (no virtual time passes).
        assert trio.current_time() == before
        assert raw == frame.text
        assert "\n" not in raw


async def test_batch_max_defaults_to_256(nursery: trio.Nursery, autojump_clock: MockClock) -> None:
    hub = make_hub()
    assert hub.settings.batch_max == 256
    client, _ = await serve_batch(nursery, hub)
    for i in range(300):
        hub.publish("pdfm", seq_frame(i))
    frames = await read_seqs(client, 300)
    assert [len(f) for f in frames] == [256, 44]
    assert [seq for frame in frames for seq in frame] == list(range(300))


async def test_published_requests_are_batched_in_order(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=5)
    client, _ = await serve_batch(nursery, hub)
    events = [{"event_type": "pdfm", "message": "SEQ", "body": i} for i in range(12)]
    publish_request(hub, PUBLISHER, publish_body(*events[:7]))
    publish_request(hub, PUBLISHER, publish_body(*events[7:]))
    frames = await read_seqs(client, 12)
    assert [seq for frame in frames for seq in frame] == list(range(12))
    assert [len(f) for f in frames] == [5, 5, 2]


async def test_batch_mode_only_sends_a_subscriber_its_channels(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=10)
    client, _ = await serve_batch(nursery, hub, "pdfm,health")
    hub.publish("orchestrator", seq_frame(100, "orchestrator"))
    hub.publish("pdfm", seq_frame(1))
    hub.publish("orchestrator", seq_frame(101, "orchestrator"))
    hub.publish("pdfm", seq_frame(2))
    assert await read_seqs(client, 2) == [[1, 2]]
    await assert_nothing_else_queued(client)


async def test_default_mode_never_joins_events(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=3)
    client, _ = await serve_batch(nursery, hub, batch=False)
    frames = [seq_frame(i) for i in range(7)]
    for frame in frames:
        hub.publish("pdfm", frame)
    for frame in frames:
        raw = await client.receive_raw()
        assert "\n" not in raw
        assert raw == frame.text
    await assert_nothing_else_queued(client)


async def test_default_and_batch_clients_share_a_publish(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    hub = make_hub(batch_max=8)
    batched, _ = await serve_batch(nursery, hub)
    plain, _ = await serve_batch(nursery, hub, batch=False)
    for i in range(4):
        hub.publish("pdfm", seq_frame(i))
    assert await read_seqs(batched, 4) == [[0, 1, 2, 3]]
    assert await read_seqs(plain, 4) == [[0], [1], [2], [3]]


async def test_batch_confirmation_is_a_frame_of_its_own(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """Events published between admission and the first write must not ride in the
    confirmation's frame: the client learns from the confirmation that it is in batch mode."""
    hub = make_hub(batch_max=8)
    session = admit_batch(hub)
    for i in range(3):
        hub.publish("pdfm", seq_frame(i))
    client = await serve(nursery, hub, session)
    first = await client.receive_raw()
    assert "\n" not in first, first
    assert json.loads(first)["message"] == CONFIRMATION
    assert await read_seqs(client, 3) == [[0, 1, 2]]


def test_replayed_copies_of_a_history_frame_share_one_wire_framing() -> None:
    """An event nobody received live is framed once for all the clients resuming over it,
    not once per client."""
    frame = Frame(b'{"message":"m"}', 1.0, "pdfm", 7)
    first, second = frame.replayed(), frame.replayed()
    assert first.wire is second.wire is frame.wire
    assert first.accepted_at is None and first.seq == 7
