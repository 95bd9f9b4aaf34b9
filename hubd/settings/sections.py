"""The sections of the configuration file but [auth] (`hubd.settings.credentials`): one
frozen Struct each, checked field by field in `__post_init__`."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec

from hubd.protocol.channels import BUILTIN_CHANNELS, valid_channel_name
from hubd.settings.fields import PositiveFloat, PositiveInt, parse_listen, unique

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    listen: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.1:8080"])
    shutdown_timeout: PositiveFloat = 10.0
    # PEM files; both set: every listener serves https/wss.
    tls_cert: str | None = None
    tls_key: str | None = None
    # Browser origins allowed to open a WebSocket ("https://ops.example.com", or "*").
    # Empty: only same-origin browser pages (Origin host = Host) and non-browser clients.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    # Seconds a new connection (and each keep-alive request after the first byte) has to
    # send its complete request line and headers; a slow sender is closed after it.
    handshake_timeout: PositiveFloat = 10.0
    # Seconds a request has to send its whole body once its headers are in (408 after).
    body_timeout: PositiveFloat = 30.0
    # Largest request line plus headers accepted (431 above it).
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1048576)] = 65536
    # HTTP/2: over TLS by ALPN, and in cleartext by `Upgrade: h2c` or prior knowledge.
    # Off: every connection speaks HTTP/1.1 (what the WebSocket fast path needs).
    http2: bool = False
    # SO_REUSEPORT on every `listen` address: several hubd processes on one host share
    # them, and the kernel spreads new connections over the processes. They share events
    # only through Redis, so the settings refuse it with the in-memory backplane.
    reuse_port: bool = False

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError(".listen must name at least one address")
        unique(self.listen, "listen")
        for i, item in enumerate(self.listen):
            try:
                parse_listen(item)
            except ValueError as exc:
                raise ValueError(f".listen[{i}]: {exc}") from None
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                " must set both 'tls_cert' and 'tls_key' (PEM files) to serve TLS, or neither"
            )
        for name in ("tls_cert", "tls_key"):
            if getattr(self, name) == "":
                raise ValueError(f".{name} must not be empty")
        unique(self.allowed_origins, "allowed_origins")
        for i, origin in enumerate(self.allowed_origins):
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f".allowed_origins[{i}] is {origin!r}; use an origin like "
                    "'https://ops.example.com' or 'http://localhost:3000' (scheme://host[:port], "
                    "no path), or '*' for any"
                )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class HubSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    channels: list[str] = msgspec.field(default_factory=list)
    idle_timeout: PositiveFloat = 60.0
    queue_size: PositiveInt = 2048
    slow_consumer: Literal["drop_oldest", "disconnect"] = "drop_oldest"
    max_message_bytes: PositiveInt = 65536
    max_publish_bytes: PositiveInt = 1048576
    batch_max: PositiveInt = 256
    compression: bool = False
    # Events kept per channel for resuming clients (?since=<id>); 0 keeps none.
    history_size: Annotated[int, msgspec.Meta(ge=0)] = 1000
    # Seconds an event stays resumable.
    history_ttl: PositiveFloat = 3600.0
    # Bytes of event frames kept in history, all channels together; the oldest go first.
    history_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 67108864
    # A file (SQLite) that keeps the history across a restart of a single node; "" keeps
    # it in memory only. The in-memory backplane only; a change needs a restart.
    history_path: str = ""
    # Channel names one request may list (subscribe query, unsubscribe body); 400 above.
    max_channels_per_request: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 64
    # Client frames one connection may send per second on average, and in a burst; over
    # it a frame is refused with an error event, and a connection that keeps going is
    # closed with 1008.
    max_client_frames_per_second: PositiveFloat = 50.0
    client_frames_burst: PositiveInt = 200

    def __post_init__(self) -> None:
        unique(self.channels, "channels")
        for i, name in enumerate(self.channels):
            if name in BUILTIN_CHANNELS:
                raise ValueError(
                    f".channels[{i}] is built-in channel {name!r}; list only extra channels"
                )
            if not valid_channel_name(name):
                raise ValueError(
                    f".channels[{i}] is {name!r}, which is not a valid channel name; "
                    "use 1-64 characters of a-z, 0-9, "
                    "'_', '.', '-', starting with a letter or digit"
                )
        if "\x00" in self.history_path or self.history_path.strip() != self.history_path:
            raise ValueError(
                f".history_path is {self.history_path!r}; use a file path without NUL "
                'characters or surrounding spaces, or "" to keep the history in memory only'
            )
        name = self.history_path.rsplit("/", 1)[-1]
        if self.history_path and (name in ("", ".", "..") or self.history_path == ":memory:"):
            raise ValueError(
                f".history_path is {self.history_path!r}, which is not a file; use a file "
                "path such as '/var/lib/hubd/history.db', or \"\" to keep the history in "
                "memory only"
            )

    @property
    def all_channels(self) -> frozenset[str]:
        return frozenset(BUILTIN_CHANNELS) | frozenset(self.channels)


class LimitsSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    one_connection_per_ip: bool = True
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    max_connections: PositiveInt = 10000
    # The header a trusted proxy names the client in: read only when the socket peer is
    # in trusted_proxies. X-Forwarded-For is read from the right.
    client_ip_header: Literal["x-forwarded-for", "x-real-ip"] = "x-forwarded-for"
    # IPv6 clients count per network of this prefix length for the per-IP rule (one host
    # usually holds a whole /64); 128: per address.
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=32, le=128)] = 64

    def __post_init__(self) -> None:
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f".trusted_proxies[{i}] is {cidr!r}, which is not an IP network; use e.g. "
                    "'10.0.0.0/8' or '127.0.0.1'"
                ) from None

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.trusted_proxies)


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": one human-readable line per record; "json": one JSON object per line.
    format: Literal["text", "json"] = "text"


class ConsoleSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Serve the web console at /console (static files; it signs in like any client).
    enabled: bool = True


class MetricsSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # Serve GET /metrics (Prometheus text format).
    enabled: bool = True
    # A separate plain-HTTP address serving /metrics without credentials (keep it private).
    # Unset: /metrics is served on the main listeners to the admin role only.
    listen: str | None = None

    def __post_init__(self) -> None:
        if self.listen is not None:
            try:
                parse_listen(self.listen)
            except ValueError as exc:
                raise ValueError(f".listen: {exc}") from None


class BackplaneSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    # "memory": one node, nothing shared. "redis": nodes share events, history and the
    # per-IP rule through one Redis server (6.2 or later).
    kind: Literal["memory", "redis"] = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key and channel hubd uses (several clusters can share a server).
    prefix: str = "hubd"
    # A node's claims (client IPs, connections) expire this long after it stops renewing
    # them, e.g. because it crashed.
    lease_seconds: Annotated[float, msgspec.Meta(ge=1)] = 15.0
    # Events a node may be behind the cluster (numbered in Redis, not yet delivered to its
    # own subscribers) before it drops its Pub/Sub subscription, and with it everything
    # buffered there, then subscribes again and catches up from the streams. Bounds the
    # memory a node that cannot keep up spends on the backlog: about max_lag x event size.
    max_lag: PositiveInt = 10000

    def __post_init__(self) -> None:
        if not re.fullmatch(r"rediss?://[^\s]+|unix://[^\s]+", self.url):
            raise ValueError(
                f".url is {self.url!r}; use redis://host:port/db, rediss://... for TLS, "
                "or unix:///path/to/redis.sock"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.prefix):
            raise ValueError(
                f".prefix is {self.prefix!r}; use 1-64 characters of A-Z a-z 0-9 _ . : -"
            )
