"""The most memory a configuration lets clients make hubd hold, for `hubd check-config`.

Plain functions of `Settings`; nothing here runs in the daemon. Figures are upper bounds
from the limits, not estimates of use: what an operator needs to see is which key makes
a number large.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubd.core.history import ENTRY_OVERHEAD
from hubd.core.serving import WRITE_BATCH
from hubd.settings import Settings

# What the envelope adds to an event's own JSON (id, timestamp, key names): at most this.
ENVELOPE_BYTES = 512
# An event's JSON is re-encoded, and numbers in its body are written out in full: "1e15,"
# (5 bytes of request) becomes "1000000000000000.0," (19 bytes), so an event can take up
# to ~3.8x the request body it came in.
NUMBER_EXPANSION = 4
# A queued frame holds its JSON and, once it has been written to anyone, its WebSocket-
# framed copy too (shared by every subscriber); plus its objects.
FRAME_COPIES = 2
FRAME_OVERHEAD = 200
# One queued frame's slot in a connection's queue (a reference).
SLOT_BYTES = 8


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """Worst-case bytes, by what holds them."""

    event_bytes: int  # the largest event's JSON
    frame_bytes: int  # what one queued or held frame can occupy (JSON, framed copy, objects)
    channels: int
    frames_per_connection: int  # its queue plus what its writer holds while writing
    # Every queued frame a distinct event (each sent to one client by client_id): the
    # honest upper bound.
    queues_distinct: int
    # Queued frames are broadcasts, which every subscriber shares: at most the newest
    # `frames_per_connection` events of each channel exist, plus each queue's slots.
    queues_shared: int
    history: int  # events kept in this process for resuming clients (0: none, or Redis)
    redis_history: int  # what hub.history_size lets Redis streams hold (backplane redis)


def memory_budget(settings: Settings) -> MemoryBudget:
    """The worst case `settings` allow; see `MemoryBudget` for each figure."""
    hub, limits = settings.hub, settings.limits
    event = hub.max_publish_bytes * NUMBER_EXPANSION + ENVELOPE_BYTES
    frame = FRAME_COPIES * event + FRAME_OVERHEAD
    channels = len(hub.all_channels)
    # A writer takes up to batch_max frames at once in batch mode (WRITE_BATCH otherwise)
    # and its queue fills again behind them while the write is under way.
    per_connection = hub.queue_size + max(hub.batch_max, WRITE_BATCH)
    distinct = limits.max_connections * per_connection * frame
    shared = (
        channels * per_connection * frame + limits.max_connections * per_connection * SLOT_BYTES
    )
    most_held = channels * hub.history_size * (event + ENTRY_OVERHEAD)
    history = redis_history = 0
    if settings.backplane.kind == "redis":
        # Streams are capped by count only (XADD MAXLEN history_size); the age applies
        # when they are read.
        redis_history = channels * hub.history_size * event
    else:
        # history_max_bytes counts each event's JSON once; a sent frame also keeps its
        # framed copy.
        history = FRAME_COPIES * min(hub.history_max_bytes, most_held)
    return MemoryBudget(
        event_bytes=event,
        frame_bytes=frame,
        channels=channels,
        frames_per_connection=per_connection,
        queues_distinct=distinct,
        queues_shared=shared,
        history=history,
        redis_history=redis_history,
    )


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human(n: float) -> str:
    """Bytes in binary units with one decimal: "512 B", "64.0 MiB", "156.3 TiB"."""
    i = 0
    while n >= 1024 and i < len(_UNITS) - 1:
        n /= 1024
        i += 1
    return f"{int(n)} B" if i == 0 else f"{n:.1f} {_UNITS[i]}"


def memory_lines(settings: Settings) -> list[str]:
    """Two lines for `check-config`: the queues' worst case (every frame a distinct event,
    then shared broadcasts) with the keys behind it, and the history's."""
    b = memory_budget(settings)
    hub, limits = settings.hub, settings.limits
    written = b.frames_per_connection - hub.queue_size
    queues = (
        f"memory: queues up to {human(b.queues_distinct)} if every queued frame is a distinct "
        f"event, {human(b.queues_shared)} if they are broadcasts (shared by subscribers): "
        f"limits.max_connections {limits.max_connections} x (hub.queue_size {hub.queue_size} "
        f"+ {written} being written) frames x {human(b.frame_bytes)} per frame "
        f"(hub.max_publish_bytes {human(hub.max_publish_bytes)}, re-encoded up to "
        f"{NUMBER_EXPANSION}x, plus its framed copy), {b.channels} channels"
    )
    if b.history == b.redis_history == 0:
        history = "memory: history none (hub.history_size or hub.history_max_bytes is 0)"
    elif settings.backplane.kind == "redis":
        history = (
            f"memory: history kept in Redis, not here: up to {human(b.redis_history)} there = "
            f"{b.channels} channels x hub.history_size {hub.history_size} x "
            f"{human(b.event_bytes)} (hub.history_max_bytes does not apply to Redis)"
        )
    elif b.history < FRAME_COPIES * hub.history_max_bytes:
        history = (
            f"memory: history up to {human(b.history)}: {b.channels} channels x "
            f"hub.history_size {hub.history_size} x {human(b.event_bytes)}, x{FRAME_COPIES} "
            "for framed copies (below hub.history_max_bytes)"
        )
    else:
        history = (
            f"memory: history up to {human(b.history)}: hub.history_max_bytes "
            f"{human(hub.history_max_bytes)}, x{FRAME_COPIES} for framed copies"
        )
    return [queues, history]
