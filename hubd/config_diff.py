"""What a reload of a configuration file changes, with one set of rules for the running
daemon (`hubd.reload.apply`) and for `hubd check-config --against-running`.

- `plan(running, started, new)`: the configuration a reload makes current, and one
  sentence (starting with the key) per value it keeps until a restart.
- `changes(running, new, planned)`: key by key (`hub.queue_size`, `auth.tokens[ci]`),
  what differs and which of those wait for a restart. Secrets are compared by digest and
  never shown.
- The record of the running configuration, `running-config.json` in the runtime directory
  (`$RUNTIME_DIRECTORY`; systemd sets it for `RuntimeDirectory=hubd`): written by the
  daemon at start and after each reload, atomically and with mode 0600, with every
  credential as its sha256 and the Redis URL without its password.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from hubd import __version__
from hubd.core.reconfigure import restart_only
from hubd.settings import AuthSettings, HubSettings, Settings
from hubd.settings.credentials import ApiKeyCredential, TokenCredential
from hubd.settings.urls import safe_url

# (section, key, why) for the keys only a restart applies. With `hub.history_path`, the
# size ceilings and `hubd.core.reconfigure.restart_only` (removing a channel,
# `hub.compression`) they are every rule `plan` applies.
RESTART_ONLY: tuple[tuple[str, str, str], ...] = (
    ("server", "listen", "the listening sockets are bound at start"),
    ("server", "tls_cert", "TLS is set up at start"),
    ("server", "tls_key", "TLS is set up at start"),
    ("server", "handshake_timeout", "the HTTP server is set up at start"),
    ("server", "max_header_bytes", "the HTTP server is set up at start"),
    ("server", "http2", "the HTTP server is set up at start"),
    ("server", "reuse_port", "the listening sockets are bound at start"),
    ("metrics", "enabled", "the metrics endpoint is set up at start"),
    ("metrics", "listen", "the listening sockets are bound at start"),
    ("backplane", "kind", "the backplane is connected at start"),
    ("backplane", "url", "the backplane is connected at start"),
    ("backplane", "prefix", "the backplane is connected at start"),
    ("backplane", "lease_seconds", "the backplane is connected at start"),
    ("backplane", "max_lag", "the backplane is connected at start"),
)

# Size limits the web server enforces with their values at start: they may go down live,
# not above those values.
CEILINGS = ("max_message_bytes", "max_publish_bytes")


@dataclass(frozen=True, slots=True)
class Plan:
    settings: Settings  # what the running configuration becomes
    kept: list[str]  # one sentence per value kept until a restart, starting with its key


def plan(running: Settings, started: HubSettings, new: Settings) -> Plan:
    """What a reload of `new` (validated) does to `running`, for a process that started
    with the hub settings `started`: `new` with every value only a restart may change put
    back to its running value (a raised size limit: to its value at start)."""
    kept: list[str] = []
    # Old values are put back all at once per section: one at a time, a half-restored
    # pair (tls_cert without tls_key) would fail the section's own validation.
    restore: dict[str, dict[str, object]] = {"server": {}, "metrics": {}, "backplane": {}}
    for section, key, why in RESTART_ONLY:
        before = getattr(getattr(running, section), key)
        if getattr(getattr(new, section), key) != before:
            kept.append(f"{section}.{key}: a change needs a restart ({why})")
            restore[section][key] = before
    hub = new.hub
    if hub.history_path != running.hub.history_path:
        # The file is opened, loaded and locked at start; switching files while running
        # would leave the new one without the events published so far.
        kept.append(
            "hub.history_path: a change needs a restart (the history file is opened at start)"
        )
        hub = msgspec.structs.replace(hub, history_path=running.hub.history_path)
    for key in CEILINGS:
        ceiling = getattr(started, key)
        if getattr(hub, key) > ceiling:
            kept.append(
                f"hub.{key}: raising it above {ceiling} (its value at start) needs a restart; "
                f"{ceiling} applies until then"
            )
            hub = msgspec.structs.replace(hub, **{key: ceiling})
    hub, hub_kept = restart_only(running.hub, hub)
    kept.extend(hub_kept)
    settings = msgspec.structs.replace(
        new,
        server=msgspec.structs.replace(new.server, **restore["server"]),
        metrics=msgspec.structs.replace(new.metrics, **restore["metrics"]),
        backplane=msgspec.structs.replace(new.backplane, **restore["backplane"]),
        hub=hub,
    )
    return Plan(settings, kept)


# -- key by key ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    key: str  # dotted path: hub.queue_size, auth.tokens[ci], auth.tokens[ci].roles
    what: str  # "64 -> 128", "added", "removed", "changed" (a secret: no values)
    restart: str | None = None  # why only a restart applies it; None: a reload does

    @property
    def log_key(self) -> str:
        """The key without a credential's name: `auth.tokens[ci].roles` -> `auth.tokens`."""
        return self.key.partition("[")[0]

    def __str__(self) -> str:
        line = f"{self.key}: {self.what}"
        if self.restart is None:
            return line
        why = self.restart
        if why == "a change needs a restart":
            return f"{line}  [restart needed]"
        if why.startswith("a change needs a restart (") and why.endswith(")"):
            why = why[len("a change needs a restart (") : -1]
        return f"{line}  [restart needed: {why}]"


def render(value: object) -> str:
    """A value as the file writes it: `true`, `128`, `"drop_oldest"`, `["a", "b"]`; an
    absent one (None) as `unset`."""
    return "unset" if value is None else json.dumps(value)


def _flat(settings: Settings) -> dict[str, object]:
    """Every key but the credentials, by dotted path."""
    flat: dict[str, object] = {}
    for name in Settings.__struct_fields__:
        if name == "auth":
            continue
        section = getattr(settings, name)
        for key in type(section).__struct_fields__:
            flat[f"{name}.{key}"] = getattr(section, key)
    return flat


Credential = TokenCredential | ApiKeyCredential


def _named(entries: Sequence[Credential]) -> dict[str, Credential]:
    """Credentials by name; a name given twice gets `#2`, `#3`... in file order."""
    named: dict[str, Credential] = {}
    for entry in entries:
        name, n = entry.name, 1
        while name in named:
            n += 1
            name = f"{entry.name}#{n}"
        named[name] = entry
    return named


def _credential_changes(kind: str, before: AuthSettings, after: AuthSettings) -> list[Change]:
    old = _named(getattr(before, kind))
    new = _named(getattr(after, kind))
    found: list[Change] = []
    for name in [*old, *(n for n in new if n not in old)]:
        key = f"auth.{kind}[{name}]"
        if name not in new:
            found.append(Change(key, "removed"))
        elif name not in old:
            found.append(Change(key, "added"))
        else:
            a, b = old[name], new[name]
            if a.digest != b.digest:
                found.append(Change(key, "changed"))
            for field in ("roles", "channels"):
                if getattr(a, field) != getattr(b, field):
                    what = f"{render(getattr(a, field))} -> {render(getattr(b, field))}"
                    found.append(Change(f"{key}.{field}", what))
    return found


def changes(running: Settings, new: Settings, planned: Plan) -> list[Change]:
    """Each key whose value in `new` differs from `running`, in file order, marked with
    why a restart is needed where `planned` (`plan(running, ..., new)`) keeps it."""
    why = {item.partition(":")[0]: item.partition(": ")[2] for item in planned.kept}
    before, after, applied = _flat(running), _flat(new), _flat(planned.settings)
    found: list[Change] = []
    for key, value in after.items():
        if value == before[key]:
            continue
        if key == "backplane.url":
            old_url, new_url = safe_url(str(before[key])), safe_url(str(value))
            # Only the password differs: say so, without it.
            what = "changed" if old_url == new_url else f"{render(old_url)} -> {render(new_url)}"
        else:
            what = f"{render(before[key])} -> {render(value)}"
        restart = None
        if applied[key] != value:
            restart = why.get(key, "a change needs a restart")
        found.append(Change(key, what, restart))
    for kind in ("tokens", "api_keys"):
        found.extend(_credential_changes(kind, running.auth, new.auth))
    return found


def log_keys(found: Iterable[Change]) -> list[str]:
    """The distinct `log_key`s of `found`, in order."""
    return list(dict.fromkeys(change.log_key for change in found))


# -- the record in the runtime directory ---------------------------------------------------

RECORD_NAME = "running-config.json"


class RecordError(Exception):
    """The record of the running configuration cannot be used; the message says why and
    names the directory."""


class Record(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The running configuration as a daemon records it. (A single daemon's record has no
    `instance` key, as before the key existed: an older hubd still reads it.)"""

    hubd: str  # the version that wrote it
    pid: int
    config: str  # the file it reloads
    recorded: str  # UTC, ISO 8601
    settings: Settings  # credentials as sha256 digests, the Redis URL without its password
    started_hub: HubSettings  # [hub] at start: the ceilings of the size limits
    backplane_url_sha256: str  # tells a changed Redis password without keeping it
    # `hubd serve --instance N`; None for a single daemon (and in records written before
    # the field existed). The settings are the file's: the instance's metrics port is not.
    instance: int | None = None

    def align(self, new: Settings) -> Settings:
        """`new` with `backplane.url` written as in the record when it is the same URL
        (the recorded one has its password masked), so that only a real change differs."""
        url = new.backplane.url
        if (
            safe_url(url) == self.settings.backplane.url
            and _sha256(url) == self.backplane_url_sha256
        ):
            backplane = msgspec.structs.replace(new.backplane, url=self.settings.backplane.url)
            return msgspec.structs.replace(new, backplane=backplane)
        return new


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def redacted(settings: Settings) -> Settings:
    """`settings` with each credential given as its sha256 and the Redis password masked:
    equal to `settings` in every comparison `changes` makes, and free of secrets."""
    auth = AuthSettings(
        tokens=[
            TokenCredential(c.name, c.roles, c.channels, token_sha256=c.digest.hex())
            for c in settings.auth.tokens
        ],
        api_keys=[
            ApiKeyCredential(c.name, c.roles, c.channels, key_sha256=c.digest.hex())
            for c in settings.auth.api_keys
        ],
    )
    backplane = msgspec.structs.replace(settings.backplane, url=safe_url(settings.backplane.url))
    return msgspec.structs.replace(settings, auth=auth, backplane=backplane)


def runtime_directory(environ: Mapping[str, str]) -> str | None:
    """The runtime directory systemd gives the service (`$RUNTIME_DIRECTORY`, its first
    entry when it lists several), or None."""
    value = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return value or None


def write_record(
    directory: str,
    settings: Settings,
    started: HubSettings,
    *,
    config: str,
    instance: int | None = None,
) -> Path:
    """Record `settings` (the running configuration) of the daemon `instance` (None: the
    only one) in `directory`: written to a temporary file with mode 0600 and renamed over
    the record, so that a reader never sees half of it. Raises `OSError`."""
    record = Record(
        hubd=__version__,
        pid=os.getpid(),
        config=os.path.abspath(config),
        recorded=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        settings=redacted(settings),
        started_hub=started,
        backplane_url_sha256=_sha256(settings.backplane.url),
        instance=instance,
    )
    data = msgspec.json.format(msgspec.json.encode(record), indent=2) + b"\n"
    target = Path(directory) / RECORD_NAME
    fd, temporary = tempfile.mkstemp(prefix=f".{RECORD_NAME}.", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read_record(directory: str) -> Record:
    """The record a running daemon keeps in `directory`. Raises `RecordError`."""
    path = Path(directory) / RECORD_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordError(
            f"no running configuration is recorded in {directory} ({RECORD_NAME} is absent): "
            "is hubd running with that runtime directory (RuntimeDirectory=hubd sets "
            "$RUNTIME_DIRECTORY; else pass --runtime-dir)?"
        ) from None
    except OSError as exc:
        raise RecordError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return msgspec.json.decode(data, type=Record)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise RecordError(f"{path} is not a running configuration this hubd reads: {exc}") from None


__all__ = [
    "CEILINGS",
    "RECORD_NAME",
    "RESTART_ONLY",
    "Change",
    "Plan",
    "Record",
    "RecordError",
    "changes",
    "log_keys",
    "plan",
    "read_record",
    "redacted",
    "render",
    "runtime_directory",
    "safe_url",
    "write_record",
]
