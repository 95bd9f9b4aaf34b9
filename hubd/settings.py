"""Configuration: one TOML file → frozen msgspec Structs.

Unknown keys are errors and every error names the key by its path
(`unknown key 'idle_timout' in [hub]`, `hub.queue_size must be >= 1, got 0`), so a typo
fails at start instead of silently running on a default.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from hubd.protocol.channels import BUILTIN_CHANNELS, valid_channel_name

Role = Literal["subscriber", "publisher", "admin"]
ROLES: tuple[str, ...] = ("subscriber", "publisher", "admin")

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is allowed."""


def _unique(values: list[str], path: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f".{path} lists {v!r} twice")
        seen.add(v)


def parse_listen(value: str) -> tuple[str, int]:
    """Parse `host:port` or `[v6]:port` into (host, port). Port 0 picks a free port."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f"listen address {value!r} must look like 'host:port' or '[v6]:port'")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"listen address {value!r} has port {port}; ports are 0-65535")
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"listen address {value!r}: {host!r} is not an IPv6 address") from None
    return host, port


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

    def __post_init__(self) -> None:
        if not self.listen:
            raise ValueError(".listen must name at least one address")
        _unique(self.listen, "listen")
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
        _unique(self.allowed_origins, "allowed_origins")
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
        _unique(self.channels, "channels")
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


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _check_secret(secret: str | None, digest: str | None, plain: str, hashed: str) -> None:
    if (secret is None) == (digest is None):
        raise ValueError(f" must set exactly one of '{plain}' or '{hashed}'")
    if secret is not None and not secret:
        raise ValueError(f".{plain} must not be empty")
    if digest is not None and not _HEX64.match(digest):
        raise ValueError(f".{hashed} must be 64 lowercase hex characters (a sha256 digest)")


class Credential(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    roles: list[Role]
    channels: list[str] | None = None

    def _check_common(self) -> None:
        if not self.name:
            raise ValueError(".name must not be empty")
        if not self.roles:
            raise ValueError(f".roles must list at least one of {', '.join(ROLES)}")
        if self.channels is not None:
            _unique(self.channels, "channels")


class TokenCredential(Credential, frozen=True):
    token: str | None = None
    token_sha256: str | None = None

    def __post_init__(self) -> None:
        self._check_common()
        _check_secret(self.token, self.token_sha256, "token", "token_sha256")

    @property
    def digest(self) -> bytes:
        if self.token is not None:
            return hashlib.sha256(self.token.encode()).digest()
        assert self.token_sha256 is not None
        return bytes.fromhex(self.token_sha256)


class ApiKeyCredential(Credential, frozen=True):
    key: str | None = None
    key_sha256: str | None = None

    def __post_init__(self) -> None:
        self._check_common()
        _check_secret(self.key, self.key_sha256, "key", "key_sha256")

    @property
    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.encode()).digest()
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    tokens: list[TokenCredential] = msgspec.field(default_factory=list)
    api_keys: list[ApiKeyCredential] = msgspec.field(default_factory=list)


class LogSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": one human-readable line per record; "json": one JSON object per line.
    format: Literal["text", "json"] = "text"


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


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    hub: HubSettings = msgspec.field(default_factory=HubSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    backplane: BackplaneSettings = msgspec.field(default_factory=BackplaneSettings)

    def summary(self) -> str:
        """One line describing what this configuration will run."""
        return (
            f"listen={','.join(self.server.listen)} "
            f"channels={len(self.hub.all_channels)} "
            f"credentials={len(self.auth.tokens)} token(s) + {len(self.auth.api_keys)} api key(s) "
            f"queue_size={self.hub.queue_size} slow_consumer={self.hub.slow_consumer} "
            f"idle_timeout={self.hub.idle_timeout:g}s"
        )


def _cross_check(settings: Settings) -> None:
    """Checks that span sections; raise ConfigError naming the key's path."""
    creds: list[tuple[str, Credential, bytes]] = [
        (f"auth.tokens[{i}]", c, c.digest) for i, c in enumerate(settings.auth.tokens)
    ] + [(f"auth.api_keys[{i}]", c, c.digest) for i, c in enumerate(settings.auth.api_keys)]
    if not creds:
        raise ConfigError(
            "no credentials configured: add at least one [[auth.tokens]] or [[auth.api_keys]] "
            "entry (a hub nobody can reach is a mistake, not a default)"
        )
    known = settings.hub.all_channels
    seen: dict[bytes, str] = {}
    for path, cred, digest in creds:
        for j, ch in enumerate(cred.channels or []):
            if ch not in known:
                raise ConfigError(
                    f"{path}.channels[{j}] is {ch!r}, which is not a channel; valid channels "
                    f"are: {', '.join(sorted(known))} (add extra ones to hub.channels)"
                )
        if digest in seen:
            raise ConfigError(f"{path} uses the same secret as {seen[digest]}; secrets must differ")
        seen[digest] = path
    if settings.hub.history_path and settings.backplane.kind != "memory":
        # Redis already keeps the history of every node; a second copy per node would
        # disagree with it after a restart.
        raise ConfigError(
            f"hub.history_path is set but backplane.kind is {settings.backplane.kind!r}: "
            "with Redis the history is kept in Redis; leave hub.history_path empty"
        )
    metrics_listen = settings.metrics.listen
    if (
        metrics_listen is not None
        and metrics_listen in settings.server.listen
        and parse_listen(metrics_listen)[1] != 0  # port 0: each gets a free port of its own
    ):
        raise ConfigError(
            f"metrics.listen {metrics_listen!r} is also in server.listen; give metrics "
            "an address of its own, or leave metrics.listen unset to serve /metrics there"
        )


_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`(?: - at `(?P<at>[^`]*)`)?$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`(?: - at `(?P<at>[^`]*)`)?$")
_AT = re.compile(r"^(?P<what>.*) - at `(?P<at>[^`]*)`$", re.S)
_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
    "null": "absent",
}


_SECTIONS = ("[server]", "[hub]", "[limits]", "[auth]", "[log]", "[metrics]", "[backplane]")


def _dotted(at: str | None) -> str:
    return (at or "$").removeprefix("$").removeprefix(".")


def _section(at: str | None) -> str:
    path = _dotted(at)
    return f"[{path}]" if path else "the top level"


def _lookup(raw: Any, dotted: str) -> Any:
    node = raw
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return node


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _translate(exc: msgspec.ValidationError, raw: dict[str, Any]) -> str:
    text = str(exc)
    if m := _UNKNOWN.match(text):
        if not m["at"]:
            return f"unknown section [{m['key']}]; known sections are {', '.join(_SECTIONS)}"
        return f"unknown key '{m['key']}' in {_section(m['at'])}"
    if m := _MISSING.match(text):
        return f"missing key '{m['key']}' in {_section(m['at'])}"
    m = _AT.match(text)
    if not m:
        return text
    what, path = m["what"], _dotted(m["at"])
    try:
        got = _show(_lookup(raw, path))
    except (KeyError, IndexError, TypeError):
        got = "?"
    if cm := re.match(r"^Expected `(\w+)` (>=|>|<=|<) (\S+)$", what):
        return f"{path} must be {cm[2]} {cm[3]}, got {got}"
    if cm := re.match(r"^Expected `(\w+)`, got `(\w+)`$", what):
        return f"{path} must be {_TYPES.get(cm[1], cm[1])}, got {got}"
    if cm := re.match(r"^Expected `(\w+) \| null`, got `(\w+)`$", what):
        return f"{path} must be {_TYPES.get(cm[1], cm[1])}, got {got}"
    if what.startswith("Invalid enum value"):
        return f"{path} has {got}, which is not allowed{_allowed(path)}"
    # __post_init__ ValueErrors arrive with the struct's path; their text starts with the
    # field's relative path (".channels[0] ...") or with " " when about the whole table.
    if what.startswith((".", " ")):
        return f"{path}{what}" if path else what.lstrip(". ")
    return f"{path}: {what}" if path else what


def _allowed(path: str) -> str:
    leaf = re.sub(r"\[\d+\]", "", path)
    choices = {
        "hub.slow_consumer": "'drop_oldest', 'disconnect'",
        "log.level": "'debug', 'info', 'warning', 'error'",
        "log.format": "'text', 'json'",
        "backplane.kind": "'memory', 'redis'",
        "limits.client_ip_header": "'x-forwarded-for', 'x-real-ip'",
        "auth.tokens.roles": "'subscriber', 'publisher', 'admin'",
        "auth.api_keys.roles": "'subscriber', 'publisher', 'admin'",
    }.get(leaf)
    return f"; use one of {choices}" if choices else ""


def load_settings_text(text: str, source: str = "<config>") -> Settings:
    """Parse and validate TOML text. Raises `ConfigError` with a key path on any problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(_translate(exc, raw)) from None
    _cross_check(settings)
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a config file. Raises `ConfigError` (unreadable file included)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(p)!r} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"config file {str(p)!r} cannot be read: permission denied") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc}") from None
    return load_settings_text(text, str(p))
