"""`hubd.config_diff`: key by key what a reload changes, which of those changes wait for a
restart (the rules `hubd.reload.apply` applies), secrets compared by digest and never
shown, and the record of the running configuration in the runtime directory."""

from __future__ import annotations

import hashlib
import os
import stat
import textwrap
from pathlib import Path

import msgspec
import pytest

from hubd import config_diff
from hubd.config_diff import Change, RecordError
from hubd.settings import Settings, load_settings_text

ALICE = '[[auth.tokens]]\nname = "alice"\ntoken = "alice-token"\nroles = ["subscriber"]\n'
PUB = '[[auth.api_keys]]\nname = "pub"\nkey = "pub-key"\nroles = ["publisher"]\n'
REDIS = '[backplane]\nkind = "redis"\nurl = "redis://hubd:old-pass@redis.example:6379/0"\n'


def settings(*parts: str) -> Settings:
    return load_settings_text("\n".join(textwrap.dedent(p) for p in parts))


def diff(running: Settings, new: Settings, started: Settings | None = None) -> list[Change]:
    planned = config_diff.plan(running, (started or running).hub, new)
    return config_diff.changes(running, new, planned)


def lines(found: list[Change]) -> list[str]:
    return [str(c) for c in found]


# -- reloadable or restart-only -------------------------------------------------------------


def test_an_unchanged_file_changes_nothing() -> None:
    config = settings('[hub]\nchannels = ["builds"]\n', ALICE, PUB, REDIS)
    assert diff(config, settings('[hub]\nchannels = ["builds"]\n', ALICE, PUB, REDIS)) == []


def test_live_keys_need_no_restart() -> None:
    new = settings(
        """
        [server]
        allowed_origins = ["https://ops.example.com"]
        body_timeout = 5.0
        [hub]
        channels = ["builds"]
        queue_size = 128
        slow_consumer = "disconnect"
        max_message_bytes = 1024
        [limits]
        max_connections = 5
        [log]
        level = "debug"
        """,
        ALICE,
    )
    assert lines(diff(settings(ALICE), new)) == [
        'server.allowed_origins: [] -> ["https://ops.example.com"]',
        "server.body_timeout: 30.0 -> 5.0",
        'hub.channels: [] -> ["builds"]',
        "hub.queue_size: 2048 -> 128",
        'hub.slow_consumer: "drop_oldest" -> "disconnect"',
        "hub.max_message_bytes: 65536 -> 1024",
        "limits.max_connections: 10000 -> 5",
        'log.level: "info" -> "debug"',
    ]


# What `server.reuse_port = true` needs beside it (the Redis backplane, a metrics listener).
SHARED_BASE = '[backplane]\nkind = "redis"\n[metrics]\nlisten = "127.0.0.1:9188"\n'


@pytest.mark.parametrize(
    ("before", "after", "key"),
    [
        ("", '[server]\nlisten = ["127.0.0.1:9090"]\n', "server.listen"),
        ("", "[server]\nmax_header_bytes = 32768\n", "server.max_header_bytes"),
        ("", "[server]\nhandshake_timeout = 3.0\n", "server.handshake_timeout"),
        ("", "[server]\nhttp2 = true\n", "server.http2"),
        (
            SHARED_BASE,
            SHARED_BASE + "[server]\nreuse_port = true\n",
            "server.reuse_port",
        ),
        ("", "[hub]\ncompression = true\n", "hub.compression"),
        ('[hub]\nchannels = ["builds"]\n', "", "hub.channels"),
        ("", '[hub]\nhistory_path = "/var/lib/hubd/history.db"\n', "hub.history_path"),
        ("", "[metrics]\nenabled = false\n", "metrics.enabled"),
        ("", '[metrics]\nlisten = "127.0.0.1:9100"\n', "metrics.listen"),
        ("", '[backplane]\nprefix = "other"\n', "backplane.prefix"),
        ("", "[backplane]\nlease_seconds = 30.0\n", "backplane.lease_seconds"),
        ("", "[backplane]\nmax_lag = 500\n", "backplane.max_lag"),
    ],
)
def test_restart_only_keys_are_marked(before: str, after: str, key: str) -> None:
    (change,) = diff(settings(before, ALICE), settings(after, ALICE))
    assert change.key == key
    assert change.restart is not None
    assert str(change).startswith(f"{key}: ") and "[restart needed" in str(change)


# A new value for each key of the table but the TLS pair (below).
OTHER_VALUES: dict[str, object] = {
    "server.listen": ["127.0.0.1:9999"],
    "server.handshake_timeout": 3.0,
    "server.max_header_bytes": 2048,
    "server.http2": True,
    "server.reuse_port": True,
    "metrics.enabled": False,
    "metrics.listen": "127.0.0.1:9100",
    "backplane.kind": "redis",
    "backplane.url": "redis://elsewhere:6379/0",
    "backplane.prefix": "other",
    "backplane.lease_seconds": 30.0,
    "backplane.max_lag": 500,
}


def test_every_key_of_the_restart_only_table_is_marked() -> None:
    """The table `plan` applies is the one `changes` marks: there is no second list."""
    running = settings(ALICE)
    table = {f"{s}.{k}": why for s, k, why in config_diff.RESTART_ONLY}
    assert set(table) - set(OTHER_VALUES) == {"server.tls_cert", "server.tls_key"}
    for dotted, value in OTHER_VALUES.items():
        section, key = dotted.split(".")
        part = msgspec.structs.replace(getattr(running, section), **{key: value})
        (change,) = diff(running, msgspec.structs.replace(running, **{section: part}))
        assert (change.key, change.restart) == (
            dotted,
            f"a change needs a restart ({table[dotted]})",
        )


def test_tls_on_marks_both_files() -> None:
    tls = '[server]\ntls_cert = "/etc/hubd/cert.pem"\ntls_key = "/etc/hubd/key.pem"\n'
    assert lines(diff(settings(ALICE), settings(tls, ALICE))) == [
        'server.tls_cert: unset -> "/etc/hubd/cert.pem"  [restart needed: TLS is set up at start]',
        'server.tls_key: unset -> "/etc/hubd/key.pem"  [restart needed: TLS is set up at start]',
    ]


def test_adding_and_removing_channels_at_once_waits_for_a_restart() -> None:
    (change,) = diff(
        settings('[hub]\nchannels = ["builds"]\n', ALICE),
        settings('[hub]\nchannels = ["deploys"]\n', ALICE),
    )
    assert str(change) == (
        'hub.channels: ["builds"] -> ["deploys"]  '
        "[restart needed: removing 'builds' needs a restart; the channel list is unchanged]"
    )


def test_size_limits_above_their_start_values_wait_for_a_restart() -> None:
    started = settings("[hub]\nmax_message_bytes = 4096\n", ALICE)
    running = settings("[hub]\nmax_message_bytes = 1024\n", ALICE)
    back_up = diff(running, settings("[hub]\nmax_message_bytes = 4096\n", ALICE), started)
    assert [c.restart for c in back_up] == [None]
    (above,) = diff(running, settings("[hub]\nmax_message_bytes = 8192\n", ALICE), started)
    assert str(above) == (
        "hub.max_message_bytes: 1024 -> 8192  [restart needed: raising it above 4096 "
        "(its value at start) needs a restart; 4096 applies until then]"
    )


def test_a_pending_restart_shows_again_until_the_restart() -> None:
    """The running configuration keeps the old value: the same file differs again."""
    running = settings(ALICE)
    new = settings('[server]\nlisten = ["127.0.0.1:9090"]\n[hub]\nqueue_size = 5\n', ALICE)
    planned = config_diff.plan(running, running.hub, new)
    assert planned.settings.server.listen == ["127.0.0.1:8080"]
    assert planned.settings.hub.queue_size == 5
    again = diff(planned.settings, new, running)
    assert [(c.key, c.restart is not None) for c in again] == [("server.listen", True)]


# -- credentials and secrets ---------------------------------------------------------------


def test_credentials_added_removed_and_edited_by_name() -> None:
    running = settings(ALICE, PUB)
    new = settings(
        ALICE.replace('"subscriber"]', '"subscriber"]\nchannels = ["pdfm"]'),
        PUB.replace("pub-key", "rotated-key"),
        '[[auth.tokens]]\nname = "bob"\ntoken = "bob-token"\nroles = ["admin"]\n',
    )
    found = diff(running, new)
    assert lines(found) == [
        'auth.tokens[alice].channels: unset -> ["pdfm"]',
        "auth.tokens[bob]: added",
        "auth.api_keys[pub]: changed",
    ]
    assert all(c.restart is None for c in found)
    assert config_diff.log_keys(found) == ["auth.tokens", "auth.api_keys"]
    removed = diff(new, settings(ALICE))
    assert lines(removed) == [
        'auth.tokens[alice].channels: ["pdfm"] -> unset',
        "auth.tokens[bob]: removed",
        "auth.api_keys[pub]: removed",
    ]


def test_a_secret_given_as_its_sha256_is_the_same_secret() -> None:
    digest = hashlib.sha256(b"alice-token").hexdigest()
    hashed = ALICE.replace('token = "alice-token"', f'token_sha256 = "{digest}"')
    assert diff(settings(ALICE), settings(hashed)) == []


def test_a_changed_redis_password_is_reported_without_it() -> None:
    (change,) = diff(settings(REDIS, ALICE), settings(REDIS.replace("old", "new"), ALICE))
    assert str(change) == (
        "backplane.url: changed  [restart needed: the backplane is connected at start]"
    )
    (moved,) = diff(
        settings(REDIS, ALICE), settings(REDIS.replace("redis.example", "other"), ALICE)
    )
    assert moved.what == (
        '"redis://hubd:***@redis.example:6379/0" -> "redis://hubd:***@other:6379/0"'
    )


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
        ("redis://user@host/1", "redis://user@host/1"),
        ("redis://:pw@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        ("unix://:pw@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
    ],
)
def test_safe_url_masks_the_password_only(url: str, safe: str) -> None:
    assert config_diff.safe_url(url) == safe


# -- the record ----------------------------------------------------------------------------


def test_the_record_is_0600_has_no_secret_and_reads_back_equal(tmp_path: Path) -> None:
    config = settings('[hub]\nchannels = ["builds"]\n', ALICE, PUB, REDIS)
    path = config_diff.write_record(str(tmp_path), config, config.hub, config="/etc/hubd/x.toml")
    assert path == tmp_path / config_diff.RECORD_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == [config_diff.RECORD_NAME]  # no temporary file left
    text = path.read_text(encoding="utf-8")
    for secret in ("alice-token", "pub-key", "old-pass"):
        assert secret not in text
    assert hashlib.sha256(b"alice-token").hexdigest() in text

    record = config_diff.read_record(str(tmp_path))
    assert (record.pid, record.config) == (os.getpid(), "/etc/hubd/x.toml")
    assert record.settings.backplane.url == "redis://hubd:***@redis.example:6379/0"
    # Against the file it came from, nothing changes (credentials compared by digest,
    # the Redis URL by its digest too).
    new = record.align(config)
    assert diff(record.settings, new) == []
    changed = record.align(
        settings('[hub]\nchannels = ["builds"]\n', ALICE, PUB, REDIS.replace("old", "x"))
    )
    assert [str(c) for c in diff(record.settings, changed)] == [
        "backplane.url: changed  [restart needed: the backplane is connected at start]"
    ]


def test_the_record_names_the_instance_and_only_an_instances_record_has_the_key(
    tmp_path: Path,
) -> None:
    config = settings(ALICE)
    single, instance = tmp_path / "single", tmp_path / "instance"
    single.mkdir()
    instance.mkdir()
    config_diff.write_record(str(single), config, config.hub, config="a.toml")
    config_diff.write_record(str(instance), config, config.hub, config="a.toml", instance=3)
    assert config_diff.read_record(str(single)).instance is None
    assert config_diff.read_record(str(instance)).instance == 3
    # A single daemon's record is what it was before instances existed: older hubd
    # versions (forbid_unknown_fields) still read it.
    assert '"instance"' not in (single / config_diff.RECORD_NAME).read_text(encoding="utf-8")
    assert '"instance": 3' in (instance / config_diff.RECORD_NAME).read_text(encoding="utf-8")


def test_a_second_record_replaces_the_first(tmp_path: Path) -> None:
    first = settings(ALICE)
    config_diff.write_record(str(tmp_path), first, first.hub, config="a.toml")
    second = settings("[hub]\nqueue_size = 5\n", ALICE)
    config_diff.write_record(str(tmp_path), second, first.hub, config="a.toml")
    assert os.listdir(tmp_path) == [config_diff.RECORD_NAME]
    record = config_diff.read_record(str(tmp_path))
    assert record.settings.hub.queue_size == 5
    assert record.started_hub == first.hub


def test_a_missing_or_unreadable_record_is_a_record_error(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=f"no running configuration is recorded in {tmp_path} "):
        config_diff.read_record(str(tmp_path))
    (tmp_path / config_diff.RECORD_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(RecordError, match="is not a running configuration"):
        config_diff.read_record(str(tmp_path))


@pytest.mark.parametrize(
    ("value", "directory"),
    [("/run/hubd", "/run/hubd"), ("/run/hubd:/run/other", "/run/hubd"), ("", None)],
)
def test_runtime_directory(value: str, directory: str | None) -> None:
    assert config_diff.runtime_directory({"RUNTIME_DIRECTORY": value}) == directory
    assert config_diff.runtime_directory({}) is None
