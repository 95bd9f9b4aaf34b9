"""What the Redis backplane writes to and reads from Redis: the publish script's
arguments, the messages on `<p>:events` and `<p>:control`, the snapshot script's answer
and the client records. Plain functions, no I/O. The formats: see `hubd.backplane.redis`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import NamedTuple

from hubd.core.publishing import Checked, RemoteClient
from hubd.protocol import notices
from hubd.protocol.envelope import encode_bytes

_ID_PLACEHOLDER = "0" * 64
# encode_bytes(notices.envelope(..., id=...)) starts with this, then the id, then a closing quote.
_ID_PREFIX = b'{"id":"'
_REST_AT = len(_ID_PREFIX) + 64 + 1


def publish_args(
    prefix: str, epoch: str, history_size: int, checked: list[Checked]
) -> list[str | bytes | int]:
    """ARGV of the publish script: the common part, then per event its channel, target,
    random id tail and JSON after the id (the script numbers it and writes the id)."""
    args: list[str | bytes | int] = [prefix, epoch, history_size, now_ms()]
    for item in checked:
        payload = encode_bytes(
            notices.envelope(
                item.channel,
                item.event.message,
                item.event.body,
                client_id=item.event.client_id,
                id=_ID_PLACEHOLDER,
            )
        )
        args += [
            item.channel,
            item.event.client_id or "",
            random.getrandbits(160).to_bytes(20, "big").hex(),
            payload[_REST_AT:],
        ]
    return args


def published_ids(answer: object) -> list[str]:
    """The event ids the publish script returned, in order."""
    assert isinstance(answer, list)
    return [i.decode() if isinstance(i, bytes) else str(i) for i in answer]


class EventMessage(NamedTuple):
    """One message on `<p>:events`."""

    channel: bytes
    target: bytes  # the client_id a targeted event is for; empty for a broadcast
    seq: int
    payload: bytes  # the event's JSON


def parse_event(data: bytes) -> EventMessage:
    """Raises ValueError for a message of another format."""
    # The fourth field (how many events their request held) is not used for now:
    # events are written at once even when they came in a batch, since they arrive
    # one Pub/Sub message at a time and queueing each for the writers to join was
    # measured slower (a writer start per event and connection, not per batch).
    channel_b, target_b, seq_b, _, payload = data.split(b"\n", 4)
    return EventMessage(channel_b, target_b, int(seq_b), payload)


def unsubscribe_command(client_id: str, channels: list[str]) -> str:
    """The `<p>:control` message asking the node holding `client_id` to unsubscribe it."""
    return f"unsub\n{client_id}\n{','.join(channels)}"


def parse_control(data: bytes) -> tuple[str, list[str]] | None:
    """(client_id, channels) of an unsubscribe command; None for anything else."""
    parts = data.decode(errors="replace").split("\n")
    if len(parts) == 3 and parts[0] == "unsub":
        return parts[1], parts[2].split(",")
    return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int  # the last seq numbered when it was read
    epoch: str
    entries: list[tuple[int, str, bytes, int]]  # (seq, channel, event JSON, time ms)
    evicted: dict[str, int]  # per channel, the newest seq trimmed from its stream


def parse_snapshot(raw: object, channels: list[str]) -> Snapshot:
    """The snapshot script's answer for `channels`, entries in seq order."""
    assert isinstance(raw, list) and len(raw) == 2 + 2 * len(channels)
    entries: list[tuple[int, str, bytes, int]] = []
    evicted: dict[str, int] = {}
    for index, channel in enumerate(channels):
        for entry in raw[2 + 2 * index]:
            ident, flat = entry[0], entry[1]
            fields = {as_bytes(flat[k]): as_bytes(flat[k + 1]) for k in range(0, len(flat), 2)}
            seq = int(as_bytes(ident).split(b"-", 1)[0])
            entries.append((seq, channel, fields[b"f"], int(fields[b"t"])))
        evicted[channel] = int(as_bytes(raw[3 + 2 * index]))
    entries.sort(key=lambda item: item[0])
    return Snapshot(int(as_bytes(raw[0])), as_bytes(raw[1]).decode(), entries, evicted)


def remote_client(client_id: str, fields: dict[bytes, bytes]) -> RemoteClient:
    """A `<p>:client:<client_id>` record."""
    subs = fields.get(b"subs", b"").decode()
    return RemoteClient(
        client_id=client_id,
        principal=fields.get(b"principal", b"").decode(),
        subscriptions=[c for c in subs.split(",") if c],
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()
