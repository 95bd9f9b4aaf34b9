"""In-process micro-benchmark of the core alone: publish to N sessions, no sockets.

Each session is served by the real `serve_session` over a transport whose send only
counts, so what is measured is the hub's fan-out, the mailboxes and the writer tasks —
the part of a delivery's cost that hubd owns, apart from the WebSocket stack's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from hubd.core.auth import Principal
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.serving import serve_session
from hubd.protocol.envelope import Envelope, encode_bytes, new_id, utc_timestamp
from hubd.settings import HubSettings, LimitsSettings


class CountingTransport:
    """Accepts every frame at once; counts writes and events. Like the real transport it
    joins the wire bytes of everything it is handed into one write."""

    def __init__(self) -> None:
        self.writes = 0
        self.events = 0
        self._never = trio.Event()

    async def send_frames(self, frames: Sequence[Frame]) -> None:
        self.writes += 1
        self.events += len(frames)
        b"".join([f.wire for f in frames])  # the cost a real write pays
        await trio.lowlevel.checkpoint()

    async def receive(self) -> str | bytes | None:
        await self._never.wait()
        return None

    async def close(self, code: int, reason: str) -> None:
        await trio.lowlevel.checkpoint()


@dataclass
class CoreResult:
    subscribers: int
    events: int
    deliveries_per_s: float
    ns_per_delivery: float


async def _one_run(subscribers: int, events: int, batch: int) -> CoreResult:
    hub = Hub(
        HubSettings(queue_size=max(4096, batch * 2), idle_timeout=3600.0),
        LimitsSettings(one_connection_per_ip=False, max_connections=subscribers + 1),
    )
    principal = Principal("bench", frozenset({"admin"}), None, "token")
    transports = [CountingTransport() for _ in range(subscribers)]
    payload = encode_bytes(
        Envelope(
            id=new_id(),
            event_type="pdfm",
            timestamp=utc_timestamp(),
            message="VM_STATE_CHANGED",
            body={"seq": 0, "pad": "x" * 150},
        )
    )
    async with trio.open_nursery() as nursery:
        for i, transport in enumerate(transports):
            session = hub.admit(principal, f"10.0.{i // 250}.{i % 250}", "pdfm")
            await nursery.start(serve_session, hub, session, transport)
        await trio.testing.wait_all_tasks_blocked()
        expected = events + 1  # + the confirmation frame
        start = time.perf_counter()
        sent = 0
        while sent < events:
            for _ in range(min(batch, events - sent)):
                # A fresh Frame per event, as a publish request makes: framing is not cached
                # across events.
                hub.publish("pdfm", Frame(payload, trio.current_time()))
            sent += batch
            # Let the writers drain before the next batch, as a publish request would.
            await trio.testing.wait_all_tasks_blocked()
        elapsed = time.perf_counter() - start
        assert all(t.events == expected for t in transports), "lost deliveries"
        nursery.cancel_scope.cancel()
    deliveries = subscribers * events
    return CoreResult(subscribers, events, deliveries / elapsed, elapsed / deliveries * 1e9)


def run_core(
    subscribers: int = 500, events: int = 2000, batch: int = 50, reps: int = 5
) -> dict[str, object]:
    """Median of `reps` runs of publishing `events` to `subscribers` sessions."""
    import trio.testing

    results = [trio.run(_one_run, subscribers, events, batch) for _ in range(reps)]
    return {
        "scenario": "core",
        "subscribers": subscribers,
        "events": events,
        "reps": reps,
        "deliveries_per_s": statistics.median(r.deliveries_per_s for r in results),
        "ns_per_delivery": statistics.median(r.ns_per_delivery for r in results),
    }
