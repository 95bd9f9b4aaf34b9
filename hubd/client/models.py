"""What the client library hands out: credentials, events, the notices of a subscription,
and the typed answers of the admin endpoints (unknown fields from newer servers are
ignored, so these keep working against them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import msgspec

from hubd.client.errors import ProtocolError

T = TypeVar("T")


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """One credential: a bearer `token` or an `api_key` (exactly one).

    The secret is sent in a header (`Authorization: Bearer` or `X-Api-Key`), never in a
    URL, and `repr()` does not show it, so it stays out of logs and tracebacks."""

    token: str | None = None
    api_key: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.token, self.api_key) if v is not None]
        if len(given) != 1:
            raise ValueError("Credentials need exactly one of token= or api_key=")
        secret = given[0]
        if not secret.strip():
            raise ValueError("the credential is empty")
        if any(c in secret for c in "\r\n\0"):
            raise ValueError("the credential contains a line break or NUL")

    @property
    def kind(self) -> Literal["token", "api_key"]:
        return "token" if self.token is not None else "api_key"

    def headers(self) -> dict[str, str]:
        """The request header carrying the credential."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token.strip()}"}
        assert self.api_key is not None
        return {"X-Api-Key": self.api_key.strip()}

    def __repr__(self) -> str:
        return f"Credentials({self.kind}=<hidden>)"


@dataclass(frozen=True, slots=True)
class Event:
    """A published event as a subscriber receives it.

    `id` is the id `publish()` returned and the resume point; `event_type` is the
    channel; `timestamp` is when hubd accepted it (RFC 3339 UTC); `body` is None when the
    event had none; `client_id` is set only on an event targeted at this connection;
    `replayed` is True when it was missed while disconnected and sent again on resume.
    `raw` is the envelope exactly as received, unknown fields included."""

    id: str
    event_type: str
    timestamp: str
    message: str
    body: Any
    client_id: str | None
    replayed: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def channel(self) -> str:
        return self.event_type

    @property
    def time(self) -> datetime:
        """`timestamp` as an aware datetime (UTC)."""
        return datetime.fromisoformat(self.timestamp.replace("Z", "+00:00"))

    @classmethod
    def from_envelope(cls, raw: dict[str, Any], *, replayed: bool = False) -> Event:
        try:
            return cls(
                id=_str(raw, "id"),
                event_type=_str(raw, "event_type"),
                timestamp=_str(raw, "timestamp"),
                message=_str(raw, "message"),
                body=raw.get("body"),
                client_id=raw.get("client_id") if isinstance(raw.get("client_id"), str) else None,
                replayed=replayed,
                raw=raw,
            )
        except KeyError as exc:
            raise ProtocolError(f"event without a string {exc.args[0]!r}: {raw!r}") from None


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise KeyError(key)
    return value


# -- notices: what a subscription reports besides events ----------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection was admitted. `resumed_from` is the event id passed as `since`
    (None on a fresh start); `reconnects` counts the connections before this one."""

    client_id: str
    subscriptions: tuple[str, ...]
    resumed_from: str | None
    reconnects: int


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection ended (`cause`, e.g. `1001 server shutting down`, or why the last
    attempt failed); the next attempt, number `attempt`, starts in `delay` seconds."""

    attempt: int
    delay: float
    cause: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resume was complete: the `replayed` events published after `after` while
    disconnected were delivered (each with `Event.replayed` set); nothing was missed."""

    after: str
    replayed: int


GapReason = Literal["history_incomplete", "no_resume_point", "dropped_by_server"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Events were or may have been missed at this point of the stream.

    - `history_incomplete`: on resume after event `after`, the server no longer held
      everything published since (it restarted, its history expired or overflowed, or the
      id is from another cluster). `replayed` events were delivered before this notice;
      others published between `after` and the reconnection are lost.
    - `no_resume_point`: the connection dropped before any event was received, so there
      was no id to resume from; events published while disconnected are not known.
    - `dropped_by_server`: this client read too slowly, the server's queue for it
      overflowed and it discarded `dropped` frames (events or replies).

    A consumer that keeps state built from events should resynchronise it from the
    source of truth when it sees a Gap."""

    reason: GapReason
    after: str | None
    replayed: int = 0
    dropped: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Channels were removed from this connection (`POST /v1/ws/unsubscribe` or a reload
    that narrowed the credential); `subscriptions` is what remains. A reconnect asks
    for the remaining channels only."""

    unsubscribed: tuple[str, ...]
    subscriptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FrameError:
    """The server could not use a frame this client sent (`ref_id` is its id)."""

    ref_id: str | None
    message: str


Notice = Connected | Reconnecting | Resumed | Gap | Unsubscribed | FrameError


# -- answers of the HTTP endpoints --------------------------------------------------------


class UnsubscribeResult(msgspec.Struct, frozen=True):
    """`POST /v1/ws/unsubscribe`: channels removed now, channels asked for but not removed
    (`global`, or not subscribed), and what remains (always ending with `global`)."""

    client_id: str
    unsubscribed: list[str]
    ignored: list[str]
    subscriptions: list[str]


class ClientInfo(msgspec.Struct, frozen=True):
    """One open subscriber connection, as `GET /v1/ws/clients` lists it."""

    client_id: str
    principal: str
    ip: str
    connected_at: str
    last_seen: str
    subscriptions: list[str]
    batch: bool
    queue_depth: int
    queue_capacity: int
    dropped: int
    closing: bool


class ChannelStats(msgspec.Struct, frozen=True):
    subscribers: int
    published: int
    delivered: int


class DeliveryLatency(msgspec.Struct, frozen=True):
    """Publish-accepted to frame-written times; quantiles are bucket upper bounds in
    seconds (None while nothing was observed)."""

    count: int
    sum_seconds: float
    p50_le_seconds: float | None
    p90_le_seconds: float | None
    p99_le_seconds: float | None
    buckets: dict[str, int]


class Stats(msgspec.Struct, frozen=True):
    """`GET /v1/ws/stats`: counters since the server started."""

    uptime_seconds: float
    connections: int
    draining: bool
    published: int
    delivered: int
    dropped: int
    queued: int
    channels: dict[str, ChannelStats]
    delivery_latency: DeliveryLatency


@dataclass(frozen=True, slots=True)
class WhoAmI:
    """What the server says about this client: the `client_id` a connection got and the
    `subscriptions` it was given. `principal` and `ip` (the address the server counts the
    connection as) come from `GET /v1/ws/clients`, so they are None unless the credential
    has the admin role."""

    client_id: str
    subscriptions: tuple[str, ...]
    principal: str | None
    ip: str | None


def convert(data: Any, kind: type[T], what: str) -> T:
    """Decode a JSON answer into `kind`, or raise ProtocolError naming the endpoint."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"unexpected answer from {what}: {exc}") from None
