"""The close race: a publish or a drain that reaches a connection's mailbox while the
connection is ending must never try to start a writer in a nursery that is closed to new
arrivals (that raised into the publisher, a 500 for a delivered event, or into the drain,
exit status 1).

The race is made deterministic with a `trio.abc.Instrument`: its `task_exited` hook runs
synchronously right after the writer task's nursery has recorded the writer's exit, the
moment at which, when the nursery body had already exited, the nursery became closed
while the mailbox's wake-up hook still pointed at it. Over `MemoryTransport`, on trio's
virtual clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
import trio.testing
from trio.testing import MockClock

from hubd.core.close_codes import CLOSE_GRACE
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.session import Session
from hubd.core.transport import Closed
from hubd.protocol.envelope import Envelope, encode_bytes

from .conftest import SUBSCRIBER, Client, StalledTransport, connect, make_hub

IDLE = 30.0
IP = "192.0.2.20"
WRITER = "_hooks.<locals>.writer"


def event(message: str) -> Frame:
    return Frame(
        encode_bytes(Envelope(id="e" * 64, event_type="pdfm", timestamp="t", message=message))
    )


class AtWriterExit(trio.abc.Instrument):
    """Once armed, runs `action` once, synchronously, when a writer task of `session`
    exits, and keeps what it returned or raised (trio would only log an exception raised
    by an instrument, and disable it)."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action = action
        self.session: Session | None = None
        self.ran = False
        self.result: object = None
        self.error: BaseException | None = None

    def arm(self, session: Session) -> None:
        self.session = session

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        session = self.session
        # Each test serves one connection: a writer task is the one of `session`.
        if session is None or self.ran or not task.name.endswith(WRITER):
            return
        self.ran = True
        try:
            self.result = self.action()
        except BaseException as exc:
            self.error = exc


def acting(hub: Hub, action: str) -> Callable[[], object]:
    if action == "publish":
        return lambda: hub.publish("pdfm", event("B"))
    return lambda: hub.close_all(1001, "server shutting down")


class ShieldedSendTransport(StalledTransport):
    """A stalled socket whose send cannot be cancelled, like Hypercorn's: a writer blocked
    in it outlives the connection's nursery body, and exits only once the test lets the
    send finish. That fixes the order the race needs: the body ends first."""

    async def send(self, text: str) -> None:
        with trio.CancelScope(shield=True):
            await super().send(text)


# How the connection ends while its writer is blocked in a send holding event A, and
# when the test lets that send finish:
# - hang_up: the client goes away; the reader sees it and the body ends at once;
# - idle_timeout: the heartbeat deadline passes (4408), then the grace, with the send stuck;
# - drain_past_grace: close_all (1001), then the grace passes with the send stuck;
# - cancelled: the task serving the connection is cancelled from outside;
# - peer_gone_while_writing: the send fails, so the writer sees it first (body still on).
ENDINGS = ["hang_up", "idle_timeout", "drain_past_grace", "cancelled", "peer_gone_while_writing"]
CLOSE_FRAME = {
    "hang_up": None,
    "idle_timeout": Closed(4408, "idle timeout"),
    "drain_past_grace": Closed(1001, "server shutting down"),
    "cancelled": None,
    "peer_gone_while_writing": None,
}


@pytest.mark.parametrize("action", ["publish", "close_all"])
@pytest.mark.parametrize("ending", ENDINGS)
async def test_nothing_reaching_an_ending_connection_raises(
    autojump_clock: MockClock, ending: str, action: str
) -> None:
    hub = make_hub(idle_timeout=IDLE)
    hook = AtWriterExit(acting(hub, action))
    transport = ShieldedSendTransport()
    connection = trio.CancelScope()  # around the task serving the connection

    async def serve(task_status: trio.TaskStatus[Client]) -> None:
        with connection:
            async with trio.open_nursery() as inner:
                client = await connect(inner, hub, SUBSCRIBER, "pdfm", IP, transport=transport)
                task_status.started(client)

    trio.lowlevel.add_instrument(hook)
    try:
        async with trio.open_nursery() as nursery:
            client = await nursery.start(serve)
            session = client.session
            transport.stall()
            hub.publish("pdfm", event("A"))  # queued: a writer takes it and blocks sending
            await trio.testing.wait_all_tasks_blocked()
            assert session.writing, "no writer is holding event A"
            hook.arm(session)
            if ending == "hang_up":
                await client.hang_up()
            elif ending == "idle_timeout":
                await trio.sleep(IDLE + CLOSE_GRACE + 1)
            elif ending == "drain_past_grace":
                hub.close_all(1001, "server shutting down")
                await trio.sleep(CLOSE_GRACE + 1)
            elif ending == "cancelled":
                connection.cancel()
            else:
                await transport.to_client.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert not hook.ran
            transport.resume()  # the send finishes (or fails): the writer exits
            await client.ended()
    finally:
        trio.lowlevel.remove_instrument(hook)
    assert hook.ran, "the writer of the connection never exited after the hook was armed"
    assert hook.error is None, f"{action} at the writer's exit raised {hook.error!r}"
    assert not session.registered
    assert session.mailbox.on_ready is None
    assert transport.closed == CLOSE_FRAME[ending]
    if action == "publish":
        # Truthful: B is never written. Once the connection's nursery body has ended, its
        # mailbox is closed and B is refused outright; while the body still runs (the
        # writer saw the peer gone first) B is accepted and discarded at unregister.
        # Either way it is counted as dropped, exactly once.
        accepted = hook.result
        assert accepted == (1 if ending == "peer_gone_while_writing" else 0)
        assert hub.delivered["pdfm"] == 1 + accepted
        assert session.mailbox.dropped_total == 1
        assert hub.dropped == 1
    if ending in ("hang_up", "peer_gone_while_writing"):
        # A drain that reaches a connection whose peer is already gone does not claim
        # to have closed it.
        assert hub.closed == {"peer": 1}


async def test_a_frame_published_as_an_idle_writer_exits_is_delivered(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """The common case of the same moment: the writer ends because the mailbox is empty,
    the connection stays open, and what is published right then starts a writer again."""
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP)
    hook = AtWriterExit(lambda: hub.publish("pdfm", event("B")))
    trio.lowlevel.add_instrument(hook)
    try:
        hook.arm(client.session)
        hub.publish("pdfm", event("A"))
        assert [(await client.receive())["message"] for _ in "AB"] == ["A", "B"]
    finally:
        trio.lowlevel.remove_instrument(hook)
    assert hook.ran and hook.error is None
    assert hook.result == 1
    assert client.session.mailbox.dropped_total == 0


async def test_a_requested_close_flushes_then_refuses_what_comes_after(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """A close keeps the connection's nursery open until the writer has flushed what was
    queued; a publish at the writer's exit is refused (counted) and the close frame is
    the last thing written."""
    hub = make_hub()
    client = await connect(nursery, hub, SUBSCRIBER, "pdfm", IP)
    hook = AtWriterExit(lambda: hub.publish("pdfm", event("late")))
    trio.lowlevel.add_instrument(hook)
    try:
        for message in "AB":
            hub.publish("pdfm", event(message))
        hook.arm(client.session)
        hub.close_all(1001, "server shutting down")
        assert [(await client.receive())["message"] for _ in "AB"] == ["A", "B"]
        assert await client.expect_close() == Closed(1001, "server shutting down")
    finally:
        trio.lowlevel.remove_instrument(hook)
    assert hook.ran and hook.error is None
    assert hook.result == 0
    assert client.session.mailbox.dropped_total == 1
