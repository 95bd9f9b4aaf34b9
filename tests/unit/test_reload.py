"""Applying a new configuration to a running hub (`hubd.reload.apply`, `Hub.reconfigure`,
`Hub.revoke`), on a `WebContext` built as the daemon builds it, with subscribers served
over `MemoryTransport` on trio's virtual clock; and what `hubd.lifecycle.reload_config`
reports of it (the `reloaded` line, systemd's STATUS, the record of the running
configuration)."""

from __future__ import annotations

import hashlib
import logging
import os
import textwrap
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from hubd import config_diff, lifecycle, reload, sdnotify
from hubd.core.auth import Authenticator, Principal
from hubd.core.close_codes import CLOSE_REVOKED, CLOSE_TRY_AGAIN_LATER
from hubd.core.errors import HubError
from hubd.core.frame import Frame
from hubd.core.hub import Hub
from hubd.core.mailbox import Overflow
from hubd.core.transport import Closed
from hubd.core.unsubscribe import unsubscribe
from hubd.protocol.envelope import Envelope, encode_bytes
from hubd.settings import Settings, load_settings_text
from hubd.web.context import WebContext

from .conftest import Client, connect

ALICE = '[[auth.tokens]]\nname = "alice"\ntoken = "alice-token"\nroles = ["subscriber"]\n'
BOB = '[[auth.tokens]]\nname = "bob"\ntoken = "bob-token"\nroles = ["subscriber"]\n'
PUBLISHER = '[[auth.api_keys]]\nname = "pub"\nkey = "pub-key"\nroles = ["publisher"]\n'


def settings(*parts: str) -> Settings:
    """Settings from TOML fragments (each dedented), joined in order."""
    return load_settings_text("\n".join(textwrap.dedent(p) for p in parts))


def context(config: Settings) -> WebContext:
    """A WebContext wired as `hubd.service.run` wires it. Must be called inside trio."""
    return WebContext(
        settings=config,
        hub=Hub(config.hub, config.limits),
        auth=Authenticator(config.auth),
        trusted_proxies=config.limits.trusted_networks,
    )


def bearer(ctx: WebContext, token: str) -> Principal:
    """The principal the running configuration gives this token (as a handshake would)."""
    return ctx.auth.authenticate(f"Bearer {token}", None)


def event(channel: str, message: str = "EVT") -> Frame:
    return Frame(
        encode_bytes(Envelope(id="e" * 64, event_type=channel, timestamp="t", message=message))
    )


async def assert_receives(client: Client, channel: str, message: str) -> None:
    """Publishing on `channel` reaches the client, which is still open."""
    assert client.hub.publish(channel, event(channel, message)) >= 1
    got = await client.receive()
    assert (got["event_type"], got["message"]) == (channel, message)
    assert client.session.close_code is None
    assert client.session.client_id in client.hub.sessions


async def assert_revoked(client: Client) -> None:
    assert await client.expect_close() == Closed(CLOSE_REVOKED, "credentials revoked")
    assert client.session.client_id not in client.hub.sessions


# -- credentials ---------------------------------------------------------------------------


async def test_removed_credential_is_closed_4401_and_the_others_stay(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE, BOB))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    bob = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "pdfm")
    bob_too = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "health")

    report = reload.apply(ctx, settings(ALICE))

    assert (report.revoked, report.narrowed, report.kept) == (2, 0, [])
    await assert_revoked(bob)
    await assert_revoked(bob_too)
    await assert_receives(alice, "pdfm", "AFTER")
    assert alice.session.subscriptions == ["pdfm", "global"]
    with pytest.raises(HubError) as info:
        bearer(ctx, "bob-token")
    assert info.value.status == 401


async def test_events_queued_before_a_revocation_are_flushed_before_4401(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE, BOB))
    bob = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "pdfm")
    ctx.hub.publish("pdfm", event("pdfm", "BEFORE"))  # queued, not yet written

    assert reload.apply(ctx, settings(ALICE)).revoked == 1

    assert (await bob.receive())["message"] == "BEFORE"
    await assert_revoked(bob)


async def test_a_new_credential_authenticates_after_the_reload(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    with pytest.raises(HubError):
        bearer(ctx, "bob-token")

    reload.apply(ctx, settings(ALICE, BOB))

    bob = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "pdfm")
    assert bob.session.principal.name == "bob"
    await assert_receives(bob, "pdfm", "HELLO")


@pytest.mark.parametrize("roles", ['["publisher"]', '["publisher", "admin"]'])
async def test_a_credential_that_lost_the_subscriber_role_is_closed_4401(
    nursery: trio.Nursery, autojump_clock: MockClock, roles: str
) -> None:
    ctx = context(settings(ALICE, BOB))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    bob = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "pdfm")
    publisher_alice = ALICE.replace('["subscriber"]', roles)

    report = reload.apply(ctx, settings(publisher_alice, BOB))

    await assert_receives(bob, "pdfm", "AFTER")
    if roles == '["publisher"]':
        assert (report.revoked, report.narrowed) == (1, 0)
        await assert_revoked(alice)
    else:  # admins may subscribe: nothing to revoke, and it takes the admin principal
        assert (report.revoked, report.narrowed) == (0, 0)
        assert alice.session.principal.is_admin
        assert (await alice.receive())["message"] == "AFTER"
        assert alice.session.close_code is None


async def test_a_renamed_principal_with_the_same_secret_stays_under_its_new_name(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    assert alice.session.principal.name == "alice"

    report = reload.apply(ctx, settings(ALICE.replace('"alice"', '"alice-renamed"', 1)))

    assert (report.revoked, report.narrowed) == (0, 0)
    assert alice.session.principal.name == "alice-renamed"
    await assert_receives(alice, "pdfm", "STILL-HERE")
    # The new name owns the connection: it may unsubscribe it.
    result = unsubscribe(ctx.hub, bearer(ctx, "alice-token"), alice.client_id, ["pdfm"])
    assert result.unsubscribed == ["pdfm"]


async def test_the_same_secret_given_as_its_sha256_keeps_the_connection(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE, BOB))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    digest = hashlib.sha256(b"alice-token").hexdigest()
    hashed = ALICE.replace('token = "alice-token"', f'token_sha256 = "{digest}"')

    report = reload.apply(ctx, settings(hashed, BOB))

    assert (report.revoked, report.narrowed) == (0, 0)
    await assert_receives(alice, "pdfm", "SAME-SECRET")


async def test_the_same_secret_moved_from_tokens_to_api_keys_is_revoked(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    """A token and an API key are different credentials, even with the same secret."""
    ctx = context(settings(ALICE, BOB))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    as_key = '[[auth.api_keys]]\nname = "alice"\nkey = "alice-token"\nroles = ["subscriber"]\n'

    assert reload.apply(ctx, settings(as_key, BOB)).revoked == 1

    await assert_revoked(alice)


async def test_a_connection_already_closing_is_not_revoked_again(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE, BOB))
    bob = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "pdfm")
    bob.session.request_close(1001, "server shutting down")

    assert reload.apply(ctx, settings(ALICE)).revoked == 0

    assert await bob.expect_close() == Closed(1001, "server shutting down")


# -- channel allow-lists -------------------------------------------------------------------


async def test_a_narrowed_allow_list_unsubscribes_the_channels_it_no_longer_admits(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE, BOB))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm,health")
    bob = await connect(nursery, ctx.hub, bearer(ctx, "bob-token"), "pdfm,health")
    narrowed = ALICE + 'channels = ["health"]\n'

    report = reload.apply(ctx, settings(narrowed, BOB))

    assert (report.revoked, report.narrowed) == (0, 1)
    notice = await alice.receive()
    assert notice["event_type"] == "global"
    assert notice["message"] == "unsubscribed"
    assert notice["client_id"] == alice.client_id
    assert notice["body"] == {"unsubscribed": ["pdfm"], "subscriptions": ["health", "global"]}
    assert alice.session.subscriptions == ["health", "global"]
    assert alice.session.principal.channels == frozenset({"health"})
    # pdfm reaches bob only; alice is still connected and still gets health.
    assert ctx.hub.publish("pdfm", event("pdfm", "PDFM")) == 1
    assert (await bob.receive())["message"] == "PDFM"
    await assert_receives(alice, "health", "HEALTH")
    assert ctx.hub.subscriber_counts()["pdfm"] == 1
    # And the narrowed credential can no longer subscribe to pdfm.
    with pytest.raises(HubError) as info:
        ctx.hub.admit(bearer(ctx, "alice-token"), "192.0.2.99", "pdfm")
    assert info.value.status == 403


async def test_an_allow_list_that_still_admits_everything_changes_nothing(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")

    report = reload.apply(ctx, settings(ALICE + 'channels = ["pdfm", "health"]\n'))

    assert (report.revoked, report.narrowed) == (0, 0)
    # The next frame is the event, not an `unsubscribed` notice.
    await assert_receives(alice, "pdfm", "UNCHANGED")


# -- hub and limits ------------------------------------------------------------------------


async def test_queue_size_and_slow_consumer_apply_to_open_connections(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    assert alice.session.mailbox.policy.value == "drop_oldest"

    reload.apply(ctx, settings('[hub]\nqueue_size = 3\nslow_consumer = "disconnect"\n', ALICE))

    assert alice.session.mailbox.capacity == 3
    assert alice.session.mailbox.policy is Overflow.DISCONNECT
    # Four events at once, before the writer runs: the fourth overflows the new bound and
    # the new policy closes the connection.
    accepted = [ctx.hub.publish("pdfm", event("pdfm", f"E{i}")) for i in range(4)]
    assert accepted == [1, 1, 1, 0]
    closed = await alice.expect_close()
    assert closed.code == CLOSE_TRY_AGAIN_LATER
    # Connections admitted later get the new bound too.
    later = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    assert later.session.mailbox.capacity == 3
    assert later.session.mailbox.policy is Overflow.DISCONNECT


async def test_max_connections_applies_to_the_next_connection_only(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    first = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    second = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")

    reload.apply(ctx, settings("[limits]\nmax_connections = 1\n", ALICE))

    # Open connections stay.
    assert ctx.hub.publish("pdfm", event("pdfm", "ONE")) == 2
    for client in (first, second):
        assert (await client.receive())["message"] == "ONE"
        assert client.session.close_code is None
    with pytest.raises(HubError) as info:
        ctx.hub.admit(bearer(ctx, "alice-token"), "192.0.2.50", None)
    assert (info.value.status, info.value.code) == (503, "at_capacity")


async def test_a_new_channel_becomes_usable(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    with pytest.raises(HubError) as info:
        ctx.hub.admit(bearer(ctx, "alice-token"), "192.0.2.60", "builds")
    assert info.value.status == 400
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")
    builder = ALICE.replace("alice", "builder") + 'channels = ["builds"]\n'

    report = reload.apply(ctx, settings('[hub]\nchannels = ["builds"]\n', ALICE, builder))

    assert report.kept == []
    assert "builds" in ctx.hub.channels
    assert ctx.settings.hub.channels == ["builds"]
    client = await connect(nursery, ctx.hub, bearer(ctx, "builder-token"), "builds")
    assert client.session.subscriptions == ["builds", "global"]
    await assert_receives(client, "builds", "BUILT")
    await assert_receives(alice, "pdfm", "UNAFFECTED")


async def test_live_keys_take_the_new_value(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    ctx = context(settings(ALICE))
    new = settings(
        """
        [server]
        shutdown_timeout = 3.5
        allowed_origins = ["https://ops.example.com"]
        [hub]
        idle_timeout = 7.0
        max_message_bytes = 1000
        max_publish_bytes = 2000
        batch_max = 9
        [limits]
        trusted_proxies = ["10.1.0.0/16"]
        max_connections = 5
        """,
        ALICE,
    )

    report = reload.apply(ctx, new)

    assert report.kept == []
    assert ctx.settings == new
    assert ctx.hub.settings == new.hub
    assert ctx.hub.limits == new.limits
    assert ctx.trusted_proxies == new.limits.trusted_networks


# -- what needs a restart ------------------------------------------------------------------


async def test_restart_only_changes_are_reported_and_not_applied(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    old = settings(
        """
        [server]
        listen = ["127.0.0.1:8080"]
        [hub]
        channels = ["builds", "deploys"]
        """,
        ALICE,
    )
    ctx = context(old)
    builds = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "builds")
    new = settings(
        """
        [server]
        listen = ["127.0.0.1:9090"]
        tls_cert = "/etc/hubd/cert.pem"
        tls_key = "/etc/hubd/key.pem"
        [hub]
        channels = ["deploys"]
        compression = true
        queue_size = 5
        [metrics]
        enabled = false
        listen = "127.0.0.1:9100"
        """,
        ALICE,
    )

    report = reload.apply(ctx, new)

    kept = {item.partition(":")[0]: item for item in report.kept}
    assert sorted(kept) == [
        "hub.channels",
        "hub.compression",
        "metrics.enabled",
        "metrics.listen",
        "server.listen",
        "server.tls_cert",
        "server.tls_key",
    ], report.kept
    assert "'builds'" in kept["hub.channels"]
    for item in report.kept:
        assert "restart" in item, item
    # Not applied: the running values stay.
    assert ctx.settings.server.listen == ["127.0.0.1:8080"]
    assert ctx.settings.server.tls_cert is None
    assert ctx.settings.server.tls_key is None
    assert not ctx.settings.server.tls
    assert ctx.settings.metrics == old.metrics
    assert ctx.settings.hub.channels == ["builds", "deploys"]
    assert ctx.settings.hub.compression is False
    assert ctx.hub.settings == ctx.settings.hub
    assert "builds" in ctx.hub.channels
    await assert_receives(builds, "builds", "STILL-A-CHANNEL")
    # The rest of the same reload applies.
    assert ctx.settings.hub.queue_size == 5
    assert builds.session.mailbox.capacity == 5


async def test_a_changed_max_lag_is_kept_for_a_restart() -> None:
    # The lag watch reads it when the backplane connects: a live change would not apply.
    old = settings("[backplane]\nmax_lag = 10000\n", ALICE)
    ctx = context(old)
    report = reload.apply(ctx, settings("[backplane]\nmax_lag = 500\n", ALICE))
    assert [item.partition(":")[0] for item in report.kept] == ["backplane.max_lag"]
    assert ctx.settings.backplane.max_lag == 10000


TLS = '[server]\ntls_cert = "/etc/hubd/cert.pem"\ntls_key = "/etc/hubd/key.pem"\n'


@pytest.mark.parametrize(("before", "after"), [("", TLS), (TLS, "")], ids=["on", "off"])
async def test_turning_tls_on_or_off_is_kept_for_a_restart(
    nursery: trio.Nursery, autojump_clock: MockClock, before: str, after: str
) -> None:
    """Both TLS keys change together: putting the old pair back must not fail."""
    old = settings(before, ALICE, BOB)
    ctx = context(old)
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "pdfm")

    report = reload.apply(ctx, settings(after, ALICE))

    assert [item.partition(":")[0] for item in report.kept] == [
        "server.tls_cert",
        "server.tls_key",
    ]
    assert ctx.settings.server == old.server
    # The rest of the file applies: bob's credential is gone.
    with pytest.raises(HubError):
        bearer(ctx, "bob-token")
    await assert_receives(alice, "pdfm", "STILL")


async def test_an_unchanged_configuration_reports_nothing(
    nursery: trio.Nursery, autojump_clock: MockClock
) -> None:
    config = settings('[hub]\nchannels = ["builds"]\n', ALICE, BOB, PUBLISHER)
    ctx = context(config)
    alice = await connect(nursery, ctx.hub, bearer(ctx, "alice-token"), "builds")

    report = reload.apply(ctx, settings('[hub]\nchannels = ["builds"]\n', ALICE, BOB, PUBLISHER))

    assert (report.revoked, report.narrowed, report.kept) == (0, 0, [])
    assert ctx.settings == config
    await assert_receives(alice, "builds", "SAME")


async def test_size_limits_go_down_live_but_not_above_their_start_values() -> None:
    ctx = context(settings("[hub]\nmax_message_bytes = 4096\nmax_publish_bytes = 8192\n", ALICE))
    lower = settings("[hub]\nmax_message_bytes = 1024\nmax_publish_bytes = 2048\n", ALICE)
    assert reload.apply(ctx, lower).kept == []
    assert (ctx.hub.settings.max_message_bytes, ctx.settings.hub.max_publish_bytes) == (1024, 2048)
    higher = settings("[hub]\nmax_message_bytes = 99999\nmax_publish_bytes = 99999\n", ALICE)
    kept = reload.apply(ctx, higher).kept
    assert [k.split(":")[0] for k in kept] == ["hub.max_message_bytes", "hub.max_publish_bytes"]
    assert "above 4096" in kept[0] and "above 8192" in kept[1]
    # Clamped to the values the web server started with.
    assert (ctx.hub.settings.max_message_bytes, ctx.settings.hub.max_publish_bytes) == (4096, 8192)


# -- what a reload reports ----------------------------------------------------------------


async def test_the_report_names_the_changed_keys_and_those_waiting_for_a_restart() -> None:
    ctx = context(settings(ALICE))
    new = settings(
        '[server]\nlisten = ["127.0.0.1:9090"]\n[hub]\nqueue_size = 5\ncompression = true\n',
        ALICE,
        BOB,
    )
    report = reload.apply(ctx, new)
    assert report.changed == ["hub.queue_size", "auth.tokens"]
    assert report.restart_pending == ["server.listen", "hub.compression"]
    assert [k.partition(":")[0] for k in report.kept] == ["server.listen", "hub.compression"]
    # Reloading the same file again: only what still waits for the restart.
    again = reload.apply(ctx, new)
    assert (again.changed, again.restart_pending) == ([], ["server.listen", "hub.compression"])


class Notifications(sdnotify.Notifier):
    """A notifier that keeps what it would send."""

    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[tuple[str, ...]] = []

    def notify(self, *states: str) -> bool:
        self.sent.append(states)
        return True


async def test_reload_config_logs_the_keys_sets_the_status_and_records_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    ctx = context(settings(ALICE))
    path = tmp_path / "hubd.toml"
    notifier = Notifications()

    path.write_text("[hub]\nqueue_size = 5\n" + ALICE, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="hubd"):
        lifecycle.reload_config(ctx, str(path), notifier, None)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reloaded")]
    assert line.endswith(" changed=hub.queue_size restart_pending=-"), line
    assert notifier.sent[-1] == ("READY=1", "STATUS=serving (configuration reloaded)")
    assert config_diff.read_record(str(tmp_path)).settings.hub.queue_size == 5

    caplog.clear()
    path.write_text(
        '[server]\nlisten = ["127.0.0.1:9090"]\n[hub]\nqueue_size = 6\n' + ALICE + BOB,
        encoding="utf-8",
    )
    with caplog.at_level(logging.INFO, logger="hubd"):
        lifecycle.reload_config(ctx, str(path), notifier, None)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reloaded")]
    assert line.endswith(" changed=hub.queue_size,auth.tokens restart_pending=server.listen"), line
    assert notifier.sent[-1] == (
        "READY=1",
        "STATUS=serving (configuration reloaded; restart needed for server.listen)",
    )
    # The record holds what runs: the new queue size, the old listen address.
    record = config_diff.read_record(str(tmp_path))
    assert record.config == str(path)
    assert (record.settings.hub.queue_size, record.settings.server.listen) == (
        6,
        ["127.0.0.1:8080"],
    )
    assert "bob-token" not in (tmp_path / config_diff.RECORD_NAME).read_text(encoding="utf-8")


async def test_reload_config_records_nothing_without_a_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    ctx = context(settings(ALICE))
    path = tmp_path / "hubd.toml"
    path.write_text(ALICE, encoding="utf-8")
    lifecycle.reload_config(ctx, str(path), Notifications(), None)
    assert os.listdir(tmp_path) == ["hubd.toml"]


async def test_a_record_that_cannot_be_written_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "absent"
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(missing))
    with caplog.at_level(logging.WARNING, logger="hubd"):
        lifecycle.record_running(context(settings(ALICE)), "hubd.toml")
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"cannot record the running configuration in {missing}: ")
