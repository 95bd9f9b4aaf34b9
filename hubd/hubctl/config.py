"""Where hubctl finds the hubd URL and the credential.

Each setting comes from the first of these that has it: command-line flags (`--url`,
`--token`, `--api-key`), then the environment (`HUBD_URL`, `HUBD_TOKEN`, `HUBD_API_KEY`),
then the config file (`url`, `token`, `api_key` in `$HUBCTL_CONFIG`, default
`$XDG_CONFIG_HOME/hubd/hubctl.toml`, i.e. `~/.config/hubd/hubctl.toml`), then, for the URL
only, `DEFAULT_URL` (what `make run` serves). The URL and the credential are looked up
separately; the credential is taken whole from one place, so a token on the command line
is never paired with an API key from the file. There is no default credential.

No message here ever contains a secret: only where it came from. The one credential a
message may name is the public development one of config/hubd.dev.toml, as a hint, when
the URL is the development server's.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hubd.client.endpoint import Endpoint
from hubd.client.models import Credentials

ENV_URL = "HUBD_URL"
ENV_TOKEN = "HUBD_TOKEN"
ENV_API_KEY = "HUBD_API_KEY"
ENV_CONFIG = "HUBCTL_CONFIG"
FILE_KEYS = ("url", "token", "api_key")

# What `make run` serves (config/hubd.dev.toml): the URL when none is configured.
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_URL_SOURCE = "the default"
# The public development credentials of config/hubd.dev.toml, by what each command needs;
# named in the missing-credential message when the URL is the development server's.
DEV_SERVER = "`make run`'s development server"
DEV_CONFIG = "config/hubd.dev.toml"
DEV_ADMIN = Credentials(token="dev-admin-token")
DEV_CREDENTIAL = {
    "subscribe": Credentials(token="dev-subscriber-token"),
    "publish": Credentials(api_key="dev-publisher-key"),
}


class ConfigError(Exception):
    """The configuration is missing or unusable; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Layer:
    """The settings one source provides (None: not set there). `source` names it in
    messages: `--url`, `HUBD_TOKEN`, a file path."""

    source: str
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    url_source: str = ""
    credential_source: str = ""

    @property
    def has_credential(self) -> bool:
        return self.token is not None or self.api_key is not None


@dataclass(frozen=True, slots=True)
class Settings:
    """What hubctl connects with, and where each part came from (for messages)."""

    url: str
    credentials: Credentials
    url_source: str
    credential_source: str
    config_path: Path
    warnings: tuple[str, ...] = ()

    @property
    def default_url(self) -> bool:
        """Whether the URL is `DEFAULT_URL` because nothing configured one."""
        return self.url_source == DEFAULT_URL_SOURCE


def is_dev_server(url: str) -> bool:
    """Whether `url` is where `make run` serves: plain HTTP on port 8080 of this machine
    (127.0.0.1 or localhost), no path prefix."""
    try:
        endpoint = Endpoint.parse(url)
    except ValueError:
        return False
    return (
        not endpoint.tls
        and endpoint.host.lower() in ("127.0.0.1", "localhost")
        and endpoint.port == 8080
        and not endpoint.prefix
    )


def dev_credential_hint(url: str, command: str | None, used: Credentials | None = None) -> str:
    """`. For make run's development server: --token dev-subscriber-token (...)`: the
    public credential of config/hubd.dev.toml that `command` needs, when `url` is that
    server's and the credential `used` is another; "" otherwise."""
    suggested = DEV_CREDENTIAL.get(command or "", DEV_ADMIN)
    if not is_dev_server(url) or used == suggested:
        return ""
    if suggested.token is not None:
        flag = f"--token {suggested.token}"
    else:
        flag = f"--api-key {suggested.api_key}"
    return f". For {DEV_SERVER}: {flag} (public, from {DEV_CONFIG})"


def config_path(env: Mapping[str, str], home: Path) -> Path:
    """`$HUBCTL_CONFIG`, else `$XDG_CONFIG_HOME/hubd/hubctl.toml`, else
    `~/.config/hubd/hubctl.toml`."""
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return base / "hubd" / "hubctl.toml"


def _set(value: str | None) -> str | None:
    """An empty value counts as not set (`HUBD_TOKEN= hubctl ...` clears it)."""
    return value if value else None


def from_flags(url: str | None, token: str | None, api_key: str | None) -> Layer:
    token, api_key = _set(token), _set(api_key)
    return Layer(
        "the command line",
        _set(url),
        token,
        api_key,
        url_source="--url",
        credential_source="--token" if token is not None else "--api-key",
    )


def from_env(env: Mapping[str, str]) -> Layer:
    token, api_key = _set(env.get(ENV_TOKEN)), _set(env.get(ENV_API_KEY))
    return Layer(
        "the environment",
        _set(env.get(ENV_URL)),
        token,
        api_key,
        url_source=ENV_URL,
        credential_source=ENV_TOKEN if token is not None else ENV_API_KEY,
    )


def from_file(path: Path) -> tuple[Layer, list[str]]:
    """The file's settings and warnings about it; an empty layer when it does not exist."""
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Layer(name), []
    except OSError as exc:
        raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        table = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # tomllib's messages give a line and column, never the value.
        raise ConfigError(f"{name} is not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{name}: unknown key {unknown[0]!r}; the keys are {', '.join(FILE_KEYS)}"
        )
    values: dict[str, str | None] = {}
    for key in FILE_KEYS:
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}: {key} must be a string")
        values[key] = _set(value)
    warnings = []
    if values["token"] is not None or values["api_key"] is not None:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.append(
                f"{name} holds a credential but other users may read it: chmod 600 {name}"
            )
    return Layer(
        name,
        values["url"],
        values["token"],
        values["api_key"],
        url_source=name,
        credential_source=name,
    ), warnings


def resolve(
    layers: Sequence[Layer],
    path: Path,
    warnings: Sequence[str] = (),
    command: str | None = None,
) -> Settings:
    """The URL from the first layer that has one (else `DEFAULT_URL`), the credential
    from the first layer that has one; ConfigError when the credential is missing or
    either is unusable. `command` (`subscribe`, ...) picks the development credential
    the missing-credential message suggests."""
    url_layer = next((layer for layer in layers if layer.url is not None), None)
    if url_layer is not None and url_layer.url is not None:
        url, url_source = url_layer.url, url_layer.url_source
    else:
        url, url_source = DEFAULT_URL, DEFAULT_URL_SOURCE
    try:
        Endpoint.parse(url)
    except ValueError as exc:
        raise ConfigError(f"{url_source}: {exc}") from None
    cred_layer = next((layer for layer in layers if layer.has_credential), None)
    if cred_layer is None:
        raise ConfigError(
            f"no credential: pass --token or --api-key, set {ENV_TOKEN} or {ENV_API_KEY}, "
            f'or put token = "..." or api_key = "..." in {path}' + dev_credential_hint(url, command)
        )
    if cred_layer.token is not None and cred_layer.api_key is not None:
        raise ConfigError(f"{cred_layer.source} gives both a token and an API key; keep only one")
    try:
        credentials = Credentials(token=cred_layer.token, api_key=cred_layer.api_key)
    except ValueError as exc:  # the message names the problem, not the value
        raise ConfigError(f"the credential from {cred_layer.credential_source}: {exc}") from None
    return Settings(
        url=url,
        credentials=credentials,
        url_source=url_source,
        credential_source=cred_layer.credential_source,
        config_path=path,
        warnings=tuple(warnings),
    )


def load(
    *,
    url: str | None,
    token: str | None,
    api_key: str | None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    command: str | None = None,
) -> Settings:
    """Flags, then `env` (default: os.environ), then the config file, then (the URL
    only) `DEFAULT_URL`. The file is read only when flags and environment leave
    something unset, so a broken file does not get in the way of explicit settings."""
    env = os.environ if env is None else env
    path = config_path(env, Path.home() if home is None else home)
    layers = [from_flags(url, token, api_key), from_env(env)]
    warnings: list[str] = []
    if not (any(x.url for x in layers) and any(x.has_credential for x in layers)):
        file_layer, warnings = from_file(path)
        layers.append(file_layer)
    return resolve(layers, path, warnings, command)
