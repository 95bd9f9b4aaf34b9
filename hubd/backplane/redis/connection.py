"""The Redis backplane's connection: which failures mean "unavailable, retry" (and of
which kind, for /metrics), the reconnect loop with backoff and jitter, the cluster's
epoch, and the lag cutoff."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from hubd.backplane.base import unavailable
from hubd.backplane.redis.outage import Outage
from hubd.core.errors import HubError
from hubd.core.history import EPOCH_HEX, new_epoch

log = logging.getLogger("hubd.backplane")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
# Seconds between two lag checks (a GET of the cluster's seq) while events flow.
LAG_CHECK = 0.1

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    coredis.exceptions.ConnectionError,
    # A wrong password or a missing permission: unavailable (and logged), not a crash.
    coredis.exceptions.AuthenticationError,
    coredis.exceptions.AuthorizationError,
    coredis.exceptions.BusyLoadingError,
    OSError,
    TimeoutError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    EOFError,
)


REDIS_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    coredis.exceptions.RedisError,
)


class DataLost(coredis.exceptions.ConnectionError):
    """Redis lost hubd's data (restarted empty, flushed): the connection starts again."""


# What `error_kind` sorts Redis failures into; each is a `hubd_backplane_errors_total`
# series from the start, zeros included.
ERROR_KINDS = ("connection", "timeout", "auth", "loading", "reply", "data_lost")


def error_kind(exc: BaseException) -> str:
    """Which of `ERROR_KINDS` a failure (one `connection_error` found) is: `connection`
    (refused, reset, closed), `timeout` (no answer in time), `auth` (wrong password or
    missing permission), `loading` (Redis still loading its data), `reply` (any other
    error reply: out of memory, read-only replica, BUSY, ...), `data_lost` (Redis lost
    hubd's data: counted by `Link.lost_data` when the new epoch is found, once per loss,
    not by the connection it restarted)."""
    if isinstance(exc, DataLost):
        return "data_lost"
    if isinstance(
        exc, (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError)
    ):
        return "auth"
    if isinstance(exc, coredis.exceptions.BusyLoadingError):
        return "loading"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, CONNECTION_ERRORS):
        return "connection"
    return "reply"


def connection_error(exc: BaseException) -> BaseException | None:
    """The connection failure inside `exc` (coredis raises them in exception groups from
    its task groups), or None when it is something else. Any error reply from Redis
    counts (out of memory, read-only replica, BUSY, ...): the backplane is unavailable
    until it answers normally again, which is logged and retried, never a crash."""
    if isinstance(exc, REDIS_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = connection_error(inner)
            if found is not None:
                return found
    return None


def cancellation(exc: BaseException) -> BaseException | None:
    """The trio cancellation inside `exc`, if any: while being cancelled, coredis may
    also report the connection it is tearing down as closed, which is not a failure."""
    if isinstance(exc, trio.Cancelled):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        cancelled, _ = exc.split(trio.Cancelled)
        return cancelled
    return None


class LagCutoff(Exception):
    """This node is more than `max_lag` events behind: drop the subscription."""

    def __init__(self, behind: int, limit: int) -> None:
        super().__init__(f"{behind} events behind, more than backplane.max_lag={limit}")
        self.behind = behind
        self.limit = limit


def lag_cutoff(exc: BaseException) -> LagCutoff | None:
    """The cutoff inside `exc`, unless it is being cancelled: tearing the subscription
    down may add connection errors to the group, which the new subscription will meet
    again if they are real."""
    if isinstance(exc, LagCutoff):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        if cancellation(exc) is not None:
            return None
        for inner in exc.exceptions:
            found = lag_cutoff(inner)
            if found is not None:
                return found
    return None


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


async def cluster_epoch(client: coredis.Redis[bytes], key: str) -> str:
    """The cluster's epoch at `key`; a fresh (or emptied) Redis gets one from the first
    node that asks. Raises a connection error when `key` holds something else."""
    value = await client.get(key)
    if value is None:
        await client.set(key, new_epoch(), condition=coredis.PureToken.NX)
        value = await client.get(key)
    epoch = value.decode() if isinstance(value, bytes) else str(value)
    if len(epoch) != EPOCH_HEX:
        raise coredis.exceptions.ConnectionError(f"{key} holds {epoch!r}, not an epoch")
    return epoch


class Link:
    """The node's connection to Redis: usable or not (and why not), and the loop that
    keeps it: on any connection failure it is marked unavailable, the reason is logged
    (rate limited while Redis stays down: `outage.Outage`), and it reconnects with
    exponential backoff and jitter. Counts the failures by kind and the reconnects."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        # Set once the first subscription of a connection has caught up; None meanwhile.
        self.client: coredis.Redis[bytes] | None = None
        self.why = "not connected yet"
        self.connected = trio.Event()
        self.was_up = False  # connected since the last failure
        # Set to make the current connection start again (Redis lost its data).
        self.reset = trio.Event()
        self.outage = Outage(log)
        # The outage the last connection ended: (seconds down, failed attempts), or None.
        self.last_outage: tuple[float, int] | None = None
        # For /metrics: Redis failures met by the connection loop and by requests, by
        # `error_kind`; connections made again after one was lost or failed.
        self.errors: Counter[str] = Counter(dict.fromkeys(ERROR_KINDS, 0))
        self.reconnects = 0
        self._ever_up = False

    def open(self) -> coredis.Redis[bytes]:
        """A new client (its own connections): the caller enters and leaves it."""
        return coredis.Redis(
            **self.options,
            decode_responses=False,
            connect_timeout=2.0,
            stream_timeout=5.0,
            retry_policy=NoRetryPolicy(),
        )

    def require(self) -> coredis.Redis[bytes]:
        """The usable client; 503 while there is none."""
        if self.client is None:
            raise unavailable(self.why)
        return self.client

    def lost(self, exc: BaseException) -> HubError:
        """A request met a connection failure: note why; the 503 to answer with."""
        self.errors[error_kind(exc)] += 1
        self.why = describe(exc)
        return unavailable(self.why)

    def refused(self, exc: BaseException) -> HubError:
        """A request got an error reply (out of memory, read-only replica, ...): the 503
        to answer with."""
        self.errors[error_kind(exc)] += 1
        return unavailable(describe(exc))

    def lost_data(self) -> None:
        """Redis holds a new epoch: it lost hubd's data (restarted empty, flushed)."""
        self.errors["data_lost"] += 1

    def up(self, client: coredis.Redis[bytes]) -> bool:
        """`client` is caught up and may be used. False when it already was (a later
        subscription of the same connection)."""
        if self.client is not None:
            return False
        self.reset = trio.Event()  # before anyone can use the client and set it
        self.client = client
        self.was_up = True
        if self._ever_up:
            self.reconnects += 1
        self._ever_up = True
        self.last_outage = self.outage.ended()
        self.connected.set()
        return True

    async def wait_up(self) -> None:
        while self.client is None:
            await self.connected.wait()

    async def reset_on_request(self) -> None:
        await self.reset.wait()
        raise DataLost("Redis lost its data: reconnecting")

    async def run(self, serve: Callable[[coredis.Redis[bytes]], Awaitable[None]]) -> None:
        """Connect and `serve` the client (which only returns by raising), forever."""
        delay = BACKOFF_FIRST
        while True:
            exc = await self._connection(serve)
            if self.was_up:
                delay = BACKOFF_FIRST  # a fresh outage: retry soon again
            wait = delay * random.uniform(0.5, 1.5)
            self._failed(exc, wait)
            await trio.sleep(wait)
            delay = min(BACKOFF_MAX, delay * 2)

    async def _connection(
        self, serve: Callable[[coredis.Redis[bytes]], Awaitable[None]]
    ) -> BaseException:
        """One connection, served until it fails: returns the connection failure, raises
        anything else (a cancellation included)."""
        try:
            async with self.open() as client:
                try:
                    await serve(client)
                finally:
                    # Before the client shuts down: nothing may start using it meanwhile.
                    self.client = None
        except BaseException as raised:
            cancelled = cancellation(raised)
            if cancelled is not None:
                self.client = None
                raise cancelled from None
            exc = connection_error(raised)
            if exc is None:
                raise
            return exc
        raise AssertionError("serve returned")  # pragma: no cover - it only raises

    def _failed(self, exc: BaseException, retry_in: float) -> None:
        """Mark the connection down, count and log why (the next attempt in `retry_in` s)."""
        was_up, self.was_up = self.was_up, False
        self.client = None
        if self.connected.is_set():
            # A fresh one for the next connection; one not set yet stays, with whoever
            # waits on it (`wait_up` from before the first connection).
            self.connected = trio.Event()
        self.why = describe(exc)
        if not isinstance(exc, DataLost):  # counted once, when the new epoch is found
            self.errors[error_kind(exc)] += 1
        self.outage.failed(self.why, retry_in, lost=was_up)
