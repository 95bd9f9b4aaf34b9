"""A subscription that stays connected: heartbeats, reconnects with backoff, resumes.

One background task owns the connection: it connects, reads frames, sends a health ping
every `heartbeat` seconds, and after a drop waits a jittered, growing delay, then
reconnects with `since=<the last event id the consumer received>`, so that hubd replays
what was published meanwhile (no loss, no duplicate) or says it cannot (`Gap`). Events and
notices reach the consumer through an unbuffered channel: a consumer that stops reading
stops the reading of the socket too, and the server's own queue (with its overflow
policy) absorbs the rest, as for any other subscriber.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from hubd.client import frames
from hubd.client.backoff import Backoff
from hubd.client.connection import refused_as_too_big
from hubd.client.errors import (
    ClientError,
    ConflictError,
    Disconnected,
    HubdError,
    NetworkError,
    ProtocolError,
    describe_close,
)
from hubd.client.models import (
    Connected,
    Event,
    FrameError,
    Gap,
    Notice,
    Reconnecting,
    Resumed,
    Unsubscribed,
)
from hubd.protocol import notices
from hubd.protocol.channels import GLOBAL, HEALTH, SYSTEM

log = logging.getLogger("hubd.client")
# A library does not print: without logging configured, its warnings stay silent instead
# of reaching stderr through logging's last-resort handler.
log.addHandler(logging.NullHandler())

# Seconds given to the close handshake when the subscription ends.
CLOSE_TIMEOUT = 5.0
# A connection that stayed up this long resets the backoff to its shortest delays.
STABLE_AFTER = 10.0

Dial = Callable[[Mapping[str, str]], AbstractAsyncContextManager[WebSocketConnection]]
NoticeCallback = Callable[[Notice], object]


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


@dataclass(frozen=True, slots=True)
class _Ended:
    code: int
    reason: str
    # Set when reconnecting cannot help: the subscription ends with it.
    fatal: ClientError | None = None


def normalize_channels(channels: str | Iterable[str], heartbeat: bool) -> list[str]:
    """Channel names trimmed, lower-cased, de-duplicated, in order; `global` left out
    (hubd always adds it); `health` appended when heartbeats need it."""
    items = channels.split(",") if isinstance(channels, str) else list(channels)
    out: list[str] = []
    for item in items:
        name = item.strip().lower()
        if name and name != GLOBAL and name not in out:
            out.append(name)
    if heartbeat and HEALTH not in out:
        out.append(HEALTH)
    return out


class Subscription:
    """The consumer's side of `HubClient.subscribe()`: `async for event in sub` yields
    every published event of the subscribed channels (`Event`), once each, in order.

    Notices (`Connected`, `Reconnecting`, `Resumed`, `Gap`, `Unsubscribed`, `FrameError`)
    are passed to the `on_notice` callback, in stream order, from inside the iteration
    (an exception it raises ends the iteration), and are logged on the `hubd.client`
    logger (`Gap` and `Reconnecting` at WARNING). Iteration raises `HubdError` (401
    `AuthError`, 403 `ForbiddenError`, 409 `ConflictError` once `conflict_window` is over,
    ...) when a reconnect is refused for good, `Disconnected` when the connection drops
    with reconnecting turned off, and `ProtocolError` when the server sent a frame over
    the client's `max_message_size` (it would come again on every resume).

    Attributes, updated as the stream goes: `client_id` and `subscriptions` of the current
    connection, `last_event_id` (the resume point: the id of the last event yielded, or
    the `since` given), `reconnects` and `gaps` (how many `Gap` notices so far).
    """

    def __init__(
        self,
        dial: Dial,
        channels: str | Iterable[str],
        *,
        since: str | None,
        heartbeat: float | None,
        reconnect: bool,
        backoff: tuple[float, float],
        batch: bool,
        on_notice: NoticeCallback | None,
        timeout: float,
        dead_after: float | None = None,
        conflict_window: float | None = None,
    ) -> None:
        if heartbeat is not None and heartbeat <= 0:
            raise ValueError(f"heartbeat must be positive or None, got {heartbeat}")
        if dead_after is not None and dead_after <= 0:
            raise ValueError(f"dead_after must be positive or None, got {dead_after}")
        if conflict_window is not None and conflict_window < 0:
            raise ValueError(f"conflict_window must be >= 0 or None, got {conflict_window}")
        self._dial = dial
        self._channels = normalize_channels(channels, heartbeat is not None)
        self._heartbeat = heartbeat
        # A ping goes out every `heartbeat` seconds and its pong comes back at once.
        if dead_after is None and heartbeat is not None:
            dead_after = 2 * heartbeat + 1.0
        self._dead_after = dead_after
        self._conflict_window = conflict_window
        self._reconnect = reconnect
        self._backoff = Backoff(*backoff)
        self._batch = batch
        self._on_notice = on_notice
        self._timeout = timeout
        self.client_id: str | None = None
        self.subscriptions: tuple[str, ...] = ()
        self.last_event_id: str | None = since
        self.reconnects = 0
        self.gaps = 0
        # Set once the subscription has closed its connection with code 1000 within
        # CLOSE_TIMEOUT.
        self.closed_cleanly = False
        self._send, self._receive = trio.open_memory_channel[Event | Notice | _Failure](0)
        self._first = trio.Event()
        self._first_error: BaseException | None = None
        self._ws: WebSocketConnection | None = None
        self._admitted_at: float | None = None
        self._closing = False
        self._close_done = trio.Event()
        # The background task runs shielded, so that a cancellation of the consumer (a
        # timeout, Ctrl-C) does not take down the connection's reader before the close
        # handshake is done; aclose() always cancels it once that is over.
        self._task_scope = trio.CancelScope(shield=True)
        self._finished = False

    # -- the consumer's side ---------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._finished:
                raise StopAsyncIteration
            try:
                item = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._finished = True
                raise StopAsyncIteration from None
            if isinstance(item, Event):
                self.last_event_id = item.id
                return item
            if isinstance(item, _Failure):
                self._finished = True
                raise item.error
            self._notice(item)

    def _notice(self, notice: Notice) -> None:
        match notice:
            case Connected():
                log.info(
                    "connected client_id=%s channels=%s resumed_from=%s",
                    notice.client_id,
                    ",".join(notice.subscriptions),
                    notice.resumed_from,
                )
            case Reconnecting():
                log.warning(
                    "connection lost (%s); reconnecting in %.1f s (attempt %d)",
                    notice.cause,
                    notice.delay,
                    notice.attempt,
                )
            case Resumed():
                log.info("resumed after %s: %d event(s) replayed", notice.after, notice.replayed)
            case Gap():
                self.gaps += 1
                log.warning("events may have been missed: %s", notice)
            case Unsubscribed():
                log.info("unsubscribed from %s", ",".join(notice.unsubscribed))
            case FrameError():
                log.warning("the server refused a frame: %s", notice.message)
        if self._on_notice is not None:
            self._on_notice(notice)

    # -- lifecycle, driven by HubClient.subscribe ------------------------------------------

    async def wait_connected(self) -> None:
        """Return once the first connection is admitted; raise why it was not."""
        await self._first.wait()
        if self._first_error is not None:
            raise self._first_error

    async def aclose(self) -> None:
        """Close the connection with code 1000 (bounded by CLOSE_TIMEOUT, whatever
        cancellation is under way), then stop the background task. Must run once `run()`
        was started, whatever happens, so that it ends."""
        self._closing = True
        ws = self._ws
        try:
            if ws is not None and ws.closed is None:
                with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                    scope.shield = True
                    await ws.aclose(1000)
                # trio-websocket swallows the Cancelled of a close that runs while an
                # exception is handled, so ask the scope whether its deadline came.
                self.closed_cleanly = not scope.cancel_called
        finally:
            self._close_done.set()
            self._task_scope.cancel()

    # -- the background task ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect, read, and reconnect until closed or failed for good. Never raises
        (except Cancelled): failures reach the consumer through the channel. Stopped by
        `aclose()` only (see `_task_scope`)."""
        with self._task_scope:
            await self._run()

    async def _run(self) -> None:
        lost_at = 0.0
        while True:
            self._admitted_at = None
            failure: ClientError | None = None
            try:
                ended = await self._connection(self.last_event_id)
                cause = describe_close(ended.code, ended.reason)
            except (HubdError, NetworkError, ProtocolError) as exc:
                failure, cause = exc, str(exc)
                ended = _Ended(1006, cause)
            if self._closing:
                return
            if ended.fatal is not None:
                await self._fail(ended.fatal)
                return
            if not self._first.is_set():
                assert failure is not None  # only the first attempt can end unadmitted
                await self._fail(failure)
                return
            now = trio.current_time()
            if self._admitted_at is not None:
                lost_at = now
                if now - self._admitted_at >= STABLE_AFTER:
                    self._backoff.reset()
            if failure is not None and not self._retryable(failure, lost_at):
                await self._fail(failure)
                return
            if not self._reconnect:
                await self._fail(Disconnected(ended.code, ended.reason))
                return
            delay = self._backoff.next_delay()
            await self._send.send(Reconnecting(self._backoff.attempt, delay, cause))
            await trio.sleep(delay)

    def _retryable(self, exc: ClientError, lost_at: float) -> bool:
        if isinstance(exc, ConflictError):
            # After a drop, hubd may not have noticed yet that the old connection is gone
            # (it does at its idle timeout once our pings stop) and refuse the new one.
            if exc.code != "ip_in_use":
                return False
            window = self._conflict_window
            return window is None or trio.current_time() - lost_at < window
        if isinstance(exc, HubdError):
            return exc.status in (408, 429) or exc.status >= 500
        return True  # the network, or a garbled connection: try again

    async def _fail(self, exc: BaseException) -> None:
        if not self._first.is_set():
            self._first_error = exc
            self._first.set()
            return
        await self._send.send(_Failure(exc))

    async def _connection(self, resume_from: str | None) -> _Ended:
        """One connection, from the upgrade until it ends."""
        query = {"event_types": ",".join(self._channels)}
        if resume_from is not None:
            query["since"] = resume_from
        if self._batch:
            query["batch"] = "1"
        async with self._dial(query) as ws:
            try:
                confirmation, rest = await frames.read_confirmation(ws, self._timeout)
                self._ws = ws
                self._admitted_at = trio.current_time()
                body = confirmation["body"]
                self.client_id = str(body["client_id"])
                self.subscriptions = frames.names(body.get("subscriptions")) or ()
                if self._first.is_set():
                    self.reconnects += 1
                self._first.set()
                async with trio.open_nursery() as nursery:
                    # Pings first: handing over the notices below waits for the consumer,
                    # which may be busy for longer than the server's idle timeout.
                    if self._heartbeat is not None:
                        nursery.start_soon(frames.send_pings, ws, self._heartbeat)
                    await self._send.send(
                        Connected(self.client_id, self.subscriptions, resume_from, self.reconnects)
                    )
                    if resume_from is None and self.reconnects:
                        await self._send.send(Gap("no_resume_point", None))
                    ended = await self._read(ws, resume_from, rest)
                    nursery.cancel_scope.cancel()
                if self._closing:
                    # The close handshake needs this connection's reader until it ends.
                    await self._close_done.wait()
                return ended
            finally:
                self._ws = None

    async def _read(
        self, ws: WebSocketConnection, resume_from: str | None, pending: list[dict[str, Any]]
    ) -> _Ended:
        replaying = resume_from is not None
        while True:
            for envelope in pending:
                replaying = await self._dispatch(envelope, replaying, resume_from)
            try:
                pending = frames.envelopes(await frames.next_frame(ws, self._dead_after))
            except ConnectionClosed as exc:
                reason = exc.reason
                if reason is None:
                    return _Ended(1006, "")
                if refused_as_too_big(ws):
                    # The same frame would come again on every resume: give up.
                    error = ProtocolError(
                        f"the server sent a frame over this client's limit ({reason.reason}); "
                        "raise max_message_size to read it"
                    )
                    return _Ended(reason.code, reason.reason or "", fatal=error)
                return _Ended(reason.code, reason.reason or "")
            except frames.Dead:
                return _Ended(1006, f"nothing from the server for {self._dead_after:g} s")

    async def _dispatch(
        self, envelope: dict[str, Any], replaying: bool, resume_from: str | None
    ) -> bool:
        """Hand one server frame to the consumer; return whether a replay is under way."""
        if envelope.get("event_type") in (HEALTH, SYSTEM):
            return replaying  # pong and client-id replies: liveness only
        if frames.is_notice(envelope):
            notice = frames.read_notice(
                envelope, resume_from, self.last_event_id, self.subscriptions
            )
            if isinstance(notice, Unsubscribed):
                self.subscriptions = notice.subscriptions
                # A reconnect asks only for what is left.
                self._channels = [c for c in self._channels if c in notice.subscriptions]
            if notice is not None:
                await self._send.send(notice)
            return False if envelope.get("message") == notices.REPLAY_COMPLETE else replaying
        try:
            event = Event.from_envelope(envelope, replayed=replaying)
        except ProtocolError as exc:
            # Skipped rather than fatal: a resume would replay it and fail again.
            log.warning("ignored a malformed event: %s", exc)
            return replaying
        await self._send.send(event)
        return replaying
