"""Applying a new configuration to a running daemon (SIGHUP / `systemctl reload`).

Credentials, limits and hub tuning apply at once without dropping connections; what
cannot change while running (listen addresses, TLS files, the metrics listener, removing
channels, compression, the history file) keeps its old value until a restart, and the
report says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from hubd.core.auth import Authenticator
from hubd.core.reconfigure import revoke
from hubd.settings import Settings
from hubd.web.context import WebContext


@dataclass(slots=True)
class ReloadReport:
    revoked: int = 0  # connections closed with 4401: their credential is gone
    narrowed: int = 0  # connections that lost channels their credential no longer allows
    kept: list[str] = field(default_factory=list)  # changes that need a restart


# (section, key) pairs only a restart applies, with why.
_RESTART_ONLY = (
    ("server", "listen", "the listening sockets are bound at start"),
    ("server", "tls_cert", "TLS is set up at start"),
    ("server", "tls_key", "TLS is set up at start"),
    ("server", "handshake_timeout", "the HTTP server is set up at start"),
    ("server", "max_header_bytes", "the HTTP server is set up at start"),
    ("server", "http2", "the HTTP server is set up at start"),
    ("metrics", "enabled", "the metrics endpoint is set up at start"),
    ("metrics", "listen", "the listening sockets are bound at start"),
    ("backplane", "kind", "the backplane is connected at start"),
    ("backplane", "url", "the backplane is connected at start"),
    ("backplane", "prefix", "the backplane is connected at start"),
    ("backplane", "lease_seconds", "the backplane is connected at start"),
    ("backplane", "max_lag", "the backplane is connected at start"),
)


def apply(ctx: WebContext, new: Settings) -> ReloadReport:
    """Make `new` (already validated) the running configuration of `ctx` and its hub."""
    report = ReloadReport()
    old = ctx.settings
    # Old values are put back all at once per section: one at a time, a half-restored
    # pair (tls_cert without tls_key) would fail the section's own validation.
    restore: dict[str, dict[str, object]] = {"server": {}, "metrics": {}, "backplane": {}}
    for section, key, why in _RESTART_ONLY:
        before = getattr(getattr(old, section), key)
        if getattr(getattr(new, section), key) != before:
            report.kept.append(f"{section}.{key}: a change needs a restart ({why})")
            restore[section][key] = before
    server = msgspec.structs.replace(new.server, **restore["server"])
    metrics = msgspec.structs.replace(new.metrics, **restore["metrics"])
    backplane = msgspec.structs.replace(new.backplane, **restore["backplane"])
    # The web server enforces message and body sizes with the limits it started with
    # (Hypercorn's WebSocket limit, Quart's content length): they may go down live, not
    # above their values at start.
    hub = new.hub
    if hub.history_path != old.hub.history_path:
        # The file is opened, loaded and locked at start; switching files while running
        # would leave the new one without the events published so far.
        report.kept.append(
            "hub.history_path: a change needs a restart (the history file is opened at start)"
        )
        hub = msgspec.structs.replace(hub, history_path=old.hub.history_path)
    for key in ("max_message_bytes", "max_publish_bytes"):
        ceiling = getattr(ctx.started.hub, key)
        if getattr(hub, key) > ceiling:
            report.kept.append(
                f"hub.{key}: raising it above {ceiling} (its value at start) needs a restart; "
                f"{ceiling} applies until then"
            )
            hub = msgspec.structs.replace(hub, **{key: ceiling})
    report.kept.extend(ctx.hub.reconfigure(hub, new.limits))
    ctx.settings = msgspec.structs.replace(
        new, server=server, metrics=metrics, backplane=backplane, hub=ctx.hub.settings
    )
    auth = Authenticator(new.auth)
    ctx.auth = auth
    # limits.client_ip_header and limits.ipv6_prefix are read from ctx.settings on each
    # handshake; open connections keep the identity they were admitted under.
    ctx.trusted_proxies = new.limits.trusted_networks
    report.revoked, report.narrowed = revoke(ctx.hub, lambda p: auth.find(p.kind, p.digest))
    return report
