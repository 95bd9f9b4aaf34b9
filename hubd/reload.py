"""Applying a new configuration to a running daemon (SIGHUP / `systemctl reload`).

Credentials, limits and hub tuning apply at once without dropping connections; what
cannot change while running (listen addresses, TLS files, the metrics listener, removing
channels, compression, the history file) keeps its old value until a restart, and the
report says so. Which values those are is decided by `hubd.config_diff.plan`, which
`hubd check-config --against-running` uses too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from hubd import config_diff
from hubd.core.auth import Authenticator
from hubd.core.reconfigure import revoke
from hubd.settings import Settings
from hubd.web.context import WebContext


@dataclass(slots=True)
class ReloadReport:
    revoked: int = 0  # connections closed with 4401: their credential is gone
    narrowed: int = 0  # connections that lost channels their credential no longer allows
    kept: list[str] = field(default_factory=list)  # changes that need a restart
    # The keys that changed (`hub.queue_size`, `auth.tokens`): applied, and pending until
    # a restart.
    changed: list[str] = field(default_factory=list)
    restart_pending: list[str] = field(default_factory=list)


def apply(ctx: WebContext, new: Settings) -> ReloadReport:
    """Make `new` (already validated) the running configuration of `ctx` and its hub."""
    report = ReloadReport()
    old = ctx.settings
    planned = config_diff.plan(old, ctx.started.hub, new)
    report.kept.extend(planned.kept)
    found = config_diff.changes(old, new, planned)
    report.changed = config_diff.log_keys(c for c in found if c.restart is None)
    report.restart_pending = config_diff.log_keys(c for c in found if c.restart is not None)
    # The hub keeps what only a restart may change itself (`restart_only`): the plan has
    # put those values back already, so it reports nothing more.
    report.kept.extend(ctx.hub.reconfigure(planned.settings.hub, new.limits))
    ctx.settings = msgspec.structs.replace(planned.settings, hub=ctx.hub.settings)
    auth = Authenticator(new.auth)
    ctx.auth = auth
    # limits.client_ip_header and limits.ipv6_prefix are read from ctx.settings on each
    # handshake; open connections keep the identity they were admitted under.
    ctx.trusted_proxies = new.limits.trusted_networks
    report.revoked, report.narrowed = revoke(ctx.hub, lambda p: auth.find(p.kind, p.digest))
    return report
