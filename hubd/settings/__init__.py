"""Configuration: one TOML file → frozen msgspec Structs.

Unknown keys are errors and every error names the key by its path
(`unknown key 'idle_timout' in [hub]`, `hub.queue_size must be >= 1, got 0`), so a typo
fails at start instead of silently running on a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from hubd.settings.credentials import AuthSettings, Credential
from hubd.settings.fields import parse_listen
from hubd.settings.messages import translate
from hubd.settings.sections import (
    BackplaneSettings,
    ConsoleSettings,
    HubSettings,
    LimitsSettings,
    LogSettings,
    MetricsSettings,
    ServerSettings,
)

__all__ = [
    "AuthSettings",
    "BackplaneSettings",
    "ConfigError",
    "ConsoleSettings",
    "HubSettings",
    "LimitsSettings",
    "LogSettings",
    "MetricsSettings",
    "ServerSettings",
    "Settings",
    "load_settings",
    "load_settings_text",
    "parse_listen",
]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what is allowed."""


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    hub: HubSettings = msgspec.field(default_factory=HubSettings)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)
    backplane: BackplaneSettings = msgspec.field(default_factory=BackplaneSettings)

    def summary(self) -> str:
        """One line describing what this configuration will run."""
        return (
            f"listen={','.join(self.server.listen)} "
            f"{'reuse_port=on ' if self.server.reuse_port else ''}"
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
    if settings.server.reuse_port:
        _check_shared_port(settings)


def _check_shared_port(settings: Settings) -> None:
    """`server.reuse_port = true`: several processes serve the same addresses, so what
    cannot be shared between them must not be configured to be."""
    if settings.backplane.kind == "memory":
        # Each process would hold some of the subscribers and see only the events
        # published to it: a silent split, not an error anyone would notice.
        raise ConfigError(
            'server.reuse_port = true needs backplane.kind = "redis": processes sharing a '
            "port with the in-memory backplane never see each other's events, so each "
            "subscriber would get only the events published to its own process"
        )
    if settings.metrics.enabled and settings.metrics.listen is None:
        raise ConfigError(
            "server.reuse_port = true needs metrics.listen (or metrics.enabled = false): on "
            "the shared port a scrape of /metrics reaches whichever process the kernel "
            "picks; give each process an address of its own (hubd serve --instance N adds "
            "N-1 to its port)"
        )
    for i, item in enumerate(settings.server.listen):
        if parse_listen(item)[1] == 0:
            raise ConfigError(
                f"server.listen[{i}] is {item!r}: with server.reuse_port = true each "
                "process must bind the same fixed port; port 0 gives each a port of its own "
                "(or, by chance, another's)"
            )


def load_settings_text(text: str, source: str = "<config>") -> Settings:
    """Parse and validate TOML text. Raises `ConfigError` with a key path on any problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(translate(exc, raw)) from None
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
