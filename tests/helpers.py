"""Helpers shared by more than one test folder (tests/e2e, tests/web):

- the test credentials (`TOKENS`, `API_KEYS`, the `SUB` / `PUB` / `ADMIN` ... headers) and
  the config they are in: `config_for`, `render_config`, `write_config`;
- the settings of the shared test server (`shared_sections`, `EXTRA_CHANNEL`, limits);
- `issue_certificate`: a server certificate from a throwaway trustme CA;
- the wire format: `HEX64`, `TIMESTAMP`, `CONFIRMATION_MESSAGE`, `assert_json_error`,
  `error_object`, `assert_uuid4`, `find_client`, `event`, `padded_ping`;
- `SubscriberBase`, what both subscriber clients (a real WebSocket, the fake ASGI one) offer
  on top of their `recv` and `send`; `subscribe_path`; `unwrap_group`.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import trio
import trustme

HOST = "127.0.0.1"

HEX64 = re.compile(r"^[0-9a-f]{64}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
CONFIRMATION_MESSAGE = "WebSocket connection established subscribed to global by default"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

# -- credentials ---------------------------------------------------------------------------

TOKENS: list[dict[str, Any]] = [
    {"name": "sub", "token": "sub-token", "roles": ["subscriber"]},
    {"name": "sub2", "token": "sub2-token", "roles": ["subscriber"]},
    {
        "name": "sub-pdfm",
        "token": "sub-pdfm-token",
        "roles": ["subscriber"],
        "channels": ["pdfm", "health"],
    },
    {"name": "pub-tok", "token": "pub-tok-token", "roles": ["publisher"]},
    {"name": "admin", "token": "admin-token", "roles": ["admin"]},
    {
        "name": "hashed",
        # sha256("hashed-token"): the secret itself is not in the file.
        "token_sha256": "550643f45e135491c47bea94823b37278d5dd91375b285d44001d005d1603a33",
        "roles": ["subscriber"],
    },
]
API_KEYS: list[dict[str, Any]] = [
    {"name": "pub", "key": "pub-key", "roles": ["publisher"]},
    {"name": "pub-pdfm", "key": "pub-pdfm-key", "roles": ["publisher"], "channels": ["pdfm"]},
    {"name": "sub-key", "key": "sub-key-secret", "roles": ["subscriber"]},
    {"name": "pubsub", "key": "pubsub-key", "roles": ["publisher", "subscriber"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SUB = bearer("sub-token")
SUB2 = bearer("sub2-token")
SUB_PDFM = bearer("sub-pdfm-token")
PUB_TOKEN = bearer("pub-tok-token")
ADMIN = bearer("admin-token")
PUB = {"X-Api-Key": "pub-key"}
PUB_PDFM = {"X-Api-Key": "pub-pdfm-key"}
SUB_KEY = {"X-Api-Key": "sub-key-secret"}
PUBSUB = {"X-Api-Key": "pubsub-key"}

# One credential as TOML, for a hand-written config fragment that must not be refused for
# having none.
CREDENTIALS_TOML = '[[auth.tokens]]\nname = "a"\ntoken = "t"\nroles = ["admin"]\n'


def issue_certificate(ca: trustme.CA, directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from `ca` and its key, written as PEM files: (cert, key)."""
    cert = ca.issue_cert(HOST)
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


# -- configuration -------------------------------------------------------------------------

BASE_CONFIG: dict[str, dict[str, Any]] = {
    "server": {"listen": [f"{HOST}:0"], "shutdown_timeout": 5.0},
    "hub": {},
    "limits": {},
    "log": {"level": "info"},
}


def config_for(**sections: Mapping[str, Any]) -> dict[str, Any]:
    """The base config with `sections` merged in key by key, plus every test credential."""
    config = copy.deepcopy(BASE_CONFIG)
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    config["auth"] = {"tokens": TOKENS, "api_keys": API_KEYS}
    return config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def render_config(config: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for section, table in config.items():
        if section == "auth":
            for kind, entries in table.items():
                for entry in entries:
                    lines.append(f"[[auth.{kind}]]")
                    lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
                    lines.append("")
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def write_config(path: Path, **sections: Mapping[str, Any]) -> Path:
    """Write `config_for(**sections)` as TOML to `path`; returns `path`."""
    path.write_text(render_config(config_for(**sections)), encoding="utf-8")
    return path


# Settings of the shared test server (tests/e2e `hub_server`, tests/web `hubd`) that tests
# rely on.
EXTRA_CHANNEL = "builds"
MAX_MESSAGE_BYTES = 4096
MAX_PUBLISH_BYTES = 262144


def shared_sections(trusted_proxies: str) -> dict[str, dict[str, Any]]:
    """The shared server's config sections: an extra channel, small frame and publish
    limits, and `trusted_proxies` (a range ordinary test clients never come from)."""
    return {
        "hub": {
            "channels": [EXTRA_CHANNEL],
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_publish_bytes": MAX_PUBLISH_BYTES,
        },
        "limits": {"trusted_proxies": [trusted_proxies]},
    }


# -- the wire format -----------------------------------------------------------------------


def event(channel: str = "pdfm", message: str = "VM_STATE_CHANGED", **extra: Any) -> dict[str, Any]:
    return {"event_type": channel, "message": message, **extra}


def error_object(body: Any) -> dict[str, str]:
    """Every error body is exactly `{"error": "<code>", "message": "<sentence>"}`."""
    assert isinstance(body, dict), body
    assert list(body) == ["error", "message"], body
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def assert_json_error(response: httpx.Response, status: int) -> dict[str, str]:
    """Every HTTP error is JSON: `{"error": "<code>", "message": "<sentence>"}`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    return error_object(response.json())


def assert_uuid4(value: Any) -> None:
    assert isinstance(value, str)
    parsed = uuid.UUID(value)
    assert parsed.version == 4 and str(parsed) == value, value


def find_client(body: dict[str, Any], client_id: str) -> dict[str, Any]:
    """The one entry for `client_id` in a `GET /v1/ws/clients` answer."""
    assert body["count"] == len(body["clients"]), body
    (found,) = [c for c in body["clients"] if c["client_id"] == client_id]
    assert isinstance(found, dict)
    return found


PING = {"event_type": "health", "message": "ping"}


def padded_ping(size: int, char: str = "x") -> str:
    """A ping frame of exactly `size` UTF-8 bytes (padding in the id)."""
    empty = json.dumps({**PING, "id": ""}, separators=(",", ":"))
    room = size - len(empty.encode())
    per_char = len(char.encode())
    assert room % per_char == 0
    frame = json.dumps(
        {**PING, "id": char * (room // per_char)}, separators=(",", ":"), ensure_ascii=False
    )
    assert len(frame.encode()) == size
    return frame


# -- subscribers ---------------------------------------------------------------------------


def subscribe_path(
    channels: str | Sequence[str] | None = None,
    *,
    prefix: str = "/v1",
    access_token: str | None = None,
    query: Mapping[str, str] | None = None,
) -> str:
    params: dict[str, str] = {}
    if channels is not None:
        params["event_types"] = channels if isinstance(channels, str) else ",".join(channels)
    if access_token is not None:
        params["access_token"] = access_token
    params.update(query or {})
    path = f"{prefix}/ws/subscribe"
    return f"{path}?{urlencode(params)}" if params else path


class SubscriberBase:
    """A connected subscriber whose confirmation frame has been read: what both clients
    offer on top of their own `recv` (the next server frame, decoded) and `send`."""

    # The longest `until` may read for.
    wait: float = 10.0

    def __init__(self) -> None:
        self.confirmation: dict[str, Any] = {}

    @property
    def client_id(self) -> str:
        return str(self.confirmation["body"]["client_id"])

    @property
    def subscriptions(self) -> list[str]:
        return list(self.confirmation["body"]["subscriptions"])

    async def recv(self) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, frame: Any) -> None:
        raise NotImplementedError

    async def request(self, frame: Any) -> dict[str, Any]:
        """Send one client frame and return the next server frame."""
        await self.send(frame)
        return await self.recv()

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read frames until one matches; return it and every frame read before it."""
        before: list[dict[str, Any]] = []
        with trio.fail_after(self.wait):
            while True:
                frame = await self.recv()
                if predicate(frame):
                    return frame, before
                before.append(frame)


def unwrap_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one meaningful exception out of a nursery's group (trio wraps everything)."""
    inner = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)] or list(
        group.exceptions
    )
    if len(inner) == 1:
        only = inner[0]
        return unwrap_group(only) if isinstance(only, BaseExceptionGroup) else only
    return group
