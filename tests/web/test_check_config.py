"""`hubd check-config` in process (`hubd.cli.main`): exit 0 with the summary and the
worst-case memory, warnings on stderr, exit 2 with a message naming the key path and no
traceback; which file it reads (`-c`, `$HUBD_CONFIG`, the default, the positional PATH);
`--against-running` on a record written as the daemon writes it; the command line's usage
errors. tests/e2e/test_cli.py runs the real command once, and keeps what needs a real
process (`--version`, `python -m hubd`, `serve`); tests/e2e/test_reload.py runs
`--against-running` against a real daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from hubd import cli, config_diff
from hubd.cli import main
from hubd.settings import load_settings

from ..helpers import CREDENTIALS_TOML, issue_certificate, write_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hubd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_check_config_good(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "hubd.toml", hub={"queue_size": 77})
    code, out, err = check(path, capsys)
    assert code == 0, err
    summary, queues, history = out.strip().splitlines()
    assert summary.startswith(f"{path}: ok: ") and "77" in summary
    assert queues.startswith("memory: queues up to ") and "hub.queue_size 77 " in queues
    assert history.startswith("memory: history up to ")
    assert err == ""
    for secret in ("sub-token", "pub-key", "admin-token"):
        assert secret not in out + err


def test_check_config_prints_the_worst_case_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        "[hub]\nqueue_size = 100\nmax_publish_bytes = 1024\nhistory_max_bytes = 1048576\n"
        "[limits]\nmax_connections = 10\n" + CREDENTIALS_TOML
    )
    code, out, _ = check(write(tmp_path, text), capsys)
    assert code == 0
    _, queues, history = out.strip().splitlines()
    assert queues == (
        "memory: queues up to 32.0 MiB if every queued frame is a distinct event, "
        "16.0 MiB if they are broadcasts (shared by subscribers): "
        "limits.max_connections 10 x (hub.queue_size 100 + 256 being written) frames x "
        "9.2 KiB per frame (hub.max_publish_bytes 1.0 KiB, re-encoded up to 4x, plus its "
        "framed copy), 5 channels"
    )
    assert history == (
        "memory: history up to 2.0 MiB: hub.history_max_bytes 1.0 MiB, x2 for framed copies"
    )


@pytest.mark.parametrize(
    ("limits", "warned"),
    [
        pytest.param('trusted_proxies = ["0.0.0.0/0"]', "trusts every IPv4 address", id="v4-all"),
        pytest.param('trusted_proxies = ["::/0"]', "trusts every IPv6 address", id="v6-all"),
        pytest.param('trusted_proxies = ["10.0.0.0/8", "64.0.0.0/3"]', "wider than /8", id="wide"),
        pytest.param('trusted_proxies = ["::ffff:10.0.0.0/104"]', "never matches", id="mapped"),
        pytest.param('client_ip_header = "x-real-ip"', "is never read", id="no-proxy"),
    ],
)
def test_check_config_warns_about_risky_trusted_proxies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], limits: str, warned: str
) -> None:
    path = write(tmp_path, f"[limits]\n{limits}\n" + CREDENTIALS_TOML)
    code, out, err = check(path, capsys)
    assert code == 0, err  # a warning, not an error
    assert out.startswith(f"{path}: ok: ")
    (line,) = err.strip().splitlines()
    assert line.startswith(f"hubd: {path}: warning: limits."), line
    assert warned in line, line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "[hub]\nidle_timout = 5\n" + CREDENTIALS_TOML,
            "unknown key 'idle_timout' in [hub]",
            id="unknown-key",
        ),
        pytest.param(
            "[hub]\nqueue_size = 0\n" + CREDENTIALS_TOML,
            "hub.queue_size must be >= 1, got 0",
            id="queue_size-zero",
        ),
        pytest.param(
            "[limits]\nmax_connections = 0\n" + CREDENTIALS_TOML,
            "limits.max_connections",
            id="max_connections-zero",
        ),
        pytest.param(
            '[hub]\nslow_consumer = "block"\n' + CREDENTIALS_TOML,
            "hub.slow_consumer",
            id="bad-enum",
        ),
        pytest.param("[hubb]\n" + CREDENTIALS_TOML, "hubb", id="unknown-section"),
        pytest.param("[hub\n", "TOML", id="not-toml"),
        pytest.param("[hub]\n", "credentials", id="no-credentials"),
        pytest.param(
            '[hub]\nidle_timeout = "soon"\n' + CREDENTIALS_TOML,
            "hub.idle_timeout must be a number",
            id="wrong-type",
        ),
        pytest.param(
            '[server]\nlisten = ["nohost"]\n' + CREDENTIALS_TOML,
            "server.listen[0]",
            id="bad-listen",
        ),
        pytest.param(
            '[[auth.tokens]]\nname = "a"\ntoken_sha256 = "xyz"\nroles = ["admin"]\n',
            "auth.tokens[0].token_sha256",
            id="bad-digest",
        ),
        pytest.param(
            CREDENTIALS_TOML + '[[auth.api_keys]]\nname = "b"\nkey = "k"\nroles = ["root"]\n',
            "auth.api_keys[0].roles[0]",
            id="bad-role",
        ),
        pytest.param(
            CREDENTIALS_TOML.replace('roles = ["admin"]', 'roles = ["admin"]\nchannels = ["nope"]'),
            "auth.tokens[0].channels[0]",
            id="allow-list-unknown-channel",
        ),
        pytest.param(
            '[server]\nallowed_origins = ["ftp://x"]\n' + CREDENTIALS_TOML,
            "server.allowed_origins[0]",
            id="bad-origin",
        ),
        pytest.param(
            '[server]\nallowed_origins = ["https://ops.example.com/console"]\n' + CREDENTIALS_TOML,
            "server.allowed_origins[0]",
            id="origin-with-path",
        ),
        pytest.param(
            '[server]\nallowed_origins = ["https://ops.example.com", "ops.example.com"]\n'
            + CREDENTIALS_TOML,
            "server.allowed_origins[1]",
            id="origin-without-scheme",
        ),
        pytest.param(
            '[server]\nallowed_origins = ["https://ops.example.com", "https://ops.example.com"]\n'
            + CREDENTIALS_TOML,
            "server.allowed_origins",
            id="origin-twice",
        ),
    ],
)
def test_check_config_bad_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = write(tmp_path, text)
    code, out, err = check(path, capsys)
    assert code == 2
    assert out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith(f"hubd: {path}: "), line
    assert message in line, line


@pytest.mark.parametrize(
    "hub",
    [
        {"batch_max": 1},
        {"batch_max": 256},
        {"batch_max": 100000},
        {"compression": True},
        {"compression": False},
        {"batch_max": 8, "compression": True},
    ],
    ids=["batch_max-1", "batch_max-256", "batch_max-big", "compression-on", "off", "both"],
)
def test_check_config_accepts_batch_max_and_compression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hub: dict[str, Any]
) -> None:
    code, out, err = check(write_config(tmp_path / "hubd.toml", hub=hub), capsys)
    assert code == 0, err
    assert ": ok: " in out


@pytest.mark.parametrize(
    ("hub", "message"),
    [
        ({"batch_max": 0}, "hub.batch_max must be >= 1, got 0"),
        ({"batch_max": -5}, "hub.batch_max must be >= 1, got -5"),
        ({"batch_max": "many"}, "hub.batch_max must be an integer, got 'many'"),
        ({"batch_max": 2.5}, "hub.batch_max must be an integer, got 2.5"),
        ({"compression": "yes"}, "hub.compression must be true or false, got 'yes'"),
        ({"compression": 1}, "hub.compression must be true or false, got 1"),
        ({"compresion": True}, "unknown key 'compresion' in [hub]"),
    ],
    ids=[
        "batch_max-0",
        "batch_max-negative",
        "batch_max-string",
        "batch_max-float",
        "compression-string",
        "compression-int",
        "compression-typo",
    ],
)
def test_check_config_refuses_bad_batch_values_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], hub: dict[str, Any], message: str
) -> None:
    code, out, err = check(write_config(tmp_path / "hubd.toml", hub=hub), capsys)
    assert code == 2
    assert out == ""
    assert message in err, err


# -- TLS files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_check_config_loads_the_tls_files(
    ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert_path, key_path = issue_certificate(ca, tmp_path)
    good = write_config(
        tmp_path / "good.toml", server={"tls_cert": str(cert_path), "tls_key": str(key_path)}
    )
    code, out, err = check(good, capsys)
    assert code == 0, err
    assert f" tls=on cert={cert_path} key={key_path} " in out.splitlines()[0]
    missing = tmp_path / "no-such-key.pem"
    bad = write_config(
        tmp_path / "bad.toml", server={"tls_cert": str(cert_path), "tls_key": str(missing)}
    )
    code, out, err = check(bad, capsys)
    assert code == 2 and out == ""
    assert "server.tls_key" in err and str(missing) in err, err


def test_tls_cert_without_tls_key_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "half.toml", server={"tls_cert": str(tmp_path / "c.pem")})
    code, out, err = check(path, capsys)
    assert code == 2 and out == ""
    assert "server" in err and "'tls_cert' and 'tls_key'" in err, err


# -- unreadable files and usage errors -----------------------------------------------------


@pytest.mark.parametrize("name", ["nope.toml", ""], ids=["missing-file", "directory"])
def test_check_config_unreadable_path_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = tmp_path / name if name else tmp_path
    code, _, err = check(path, capsys)
    assert code == 2
    assert str(path) in err


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--bogus"], id="top-level"),
        pytest.param(["serve", "--bogus"], id="serve"),
        pytest.param(["check-config", "--bogus", "x.toml"], id="check-config"),
        pytest.param(["check-config", "-c", "a.toml", "b.toml"], id="two-files"),
        pytest.param(["check-config", "--runtime-dir", "/run/hubd"], id="runtime-dir-alone"),
        pytest.param(["serve", "--instance", "0"], id="serve-instance-0"),
        pytest.param(["check-config", "--instance", "02", "x.toml"], id="instance-02"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: hubd" in err and "Traceback" not in out + err


# -- which file: -c, $HUBD_CONFIG, the default ---------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["-c", "{path}"], ["--config", "{path}"], ["{path}"], ["-c", "{path}", "{path}"]],
    ids=["-c", "--config", "positional", "both-the-same"],
)
def test_check_config_reads_the_file_given(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
) -> None:
    monkeypatch.setenv("HUBD_CONFIG", str(tmp_path / "not-this-one.toml"))
    path = write_config(tmp_path / "given.toml", hub={"queue_size": 71})
    code = main(["check-config", *(a.format(path=path) for a in args)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith(f"{path}: ok: ") and "queue_size=71 " in out


def test_check_config_reads_hubd_config_then_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = write_config(tmp_path / "env.toml", hub={"queue_size": 72})
    monkeypatch.setenv("HUBD_CONFIG", str(from_env))
    assert main(["check-config"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"{from_env}: ok: ") and "queue_size=72 " in out

    monkeypatch.delenv("HUBD_CONFIG")
    default = write_config(tmp_path / "default.toml", hub={"queue_size": 73})
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", str(default))
    assert main(["check-config"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith(f"{default}: ok: ") and "queue_size=73 " in out


def test_check_config_without_a_file_names_the_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUBD_CONFIG", raising=False)
    assert main(["check-config"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"hubd: {cli.DEFAULT_CONFIG}: ") and "does not exist" in err, err


# -- the summary: backplane, TLS, metrics ---------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "shown"),
    [
        pytest.param({}, "backplane=memory tls=off metrics=main-listeners", id="defaults"),
        pytest.param(
            {
                "backplane": {"kind": "redis", "url": "redis://hubd:s3cret@redis.example:6380/2"},
                "metrics": {"listen": "127.0.0.1:9100"},
            },
            "backplane=redis url=redis://hubd:***@redis.example:6380/2 tls=off "
            "metrics=127.0.0.1:9100",
            id="redis-with-password",
        ),
        pytest.param(
            {"backplane": {"kind": "redis", "url": "rediss://:s3cret@[::1]:6379/0"}},
            "backplane=redis url=rediss://:***@[::1]:6379/0 ",
            id="redis-ipv6",
        ),
        pytest.param(
            {"backplane": {"kind": "redis", "url": "unix:///run/redis/redis.sock?db=1"}},
            "backplane=redis url=unix:///run/redis/redis.sock?db=1 ",
            id="redis-unix",
        ),
        pytest.param({"metrics": {"enabled": False}}, " metrics=off", id="metrics-off"),
    ],
)
def test_check_config_summary_names_backplane_tls_and_metrics(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sections: dict[str, dict[str, Any]],
    shown: str,
) -> None:
    code, out, err = check(write_config(tmp_path / "hubd.toml", **sections), capsys)
    assert code == 0, err
    summary = out.splitlines()[0]
    assert shown in summary + " ", summary
    assert "s3cret" not in out + err


# -- --against-running -----------------------------------------------------------------------


def record(tmp_path: Path, running: Path) -> Path:
    """A runtime directory holding the record a daemon started on `running` writes."""
    directory = tmp_path / "run"
    directory.mkdir()
    settings = load_settings(running)
    config_diff.write_record(str(directory), settings, settings.hub, config=str(running))
    return directory


def against_running(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["check-config", *args, "--against-running"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = out.splitlines()
    return code, lines[lines.index(next(x for x in lines if x.startswith("against "))) :], err


def test_against_running_lists_each_key_and_marks_restarts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    running = write_config(tmp_path / "hubd.toml", hub={"queue_size": 64, "channels": ["builds"]})
    directory = record(tmp_path, running)
    new = write_config(
        tmp_path / "new.toml",
        hub={"queue_size": 128, "compression": True},
        server={"max_header_bytes": 32768},
    )
    code, lines, err = against_running(capsys, "-c", str(new), "--runtime-dir", str(directory))
    assert code == 0, err
    assert lines[0].startswith("against the running hubd (pid ")
    assert lines[1:] == [
        "  server.max_header_bytes: 65536 -> 32768  "
        "[restart needed: the HTTP server is set up at start]",
        '  hub.channels: ["builds"] -> []  '
        "[restart needed: removing 'builds' needs a restart; the channel list is unchanged]",
        "  hub.queue_size: 64 -> 128",
        "  hub.compression: false -> true  [restart needed]",
        "reload: 1 key would apply at once; 3 keys would wait for a restart: "
        "server.max_header_bytes, hub.channels, hub.compression",
        f"note: the running hubd reloads {running}; put this file there first",
    ]
    assert err == ""


def test_against_running_reports_changed_secrets_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis = {"kind": "redis", "url": "redis://:old-pass@redis.example:6379/0"}
    running = tmp_path / "hubd.toml"
    running.write_text(
        '[backplane]\nkind = "redis"\nurl = "redis://:old-pass@redis.example:6379/0"\n'
        + CREDENTIALS_TOML,
        encoding="utf-8",
    )
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(record(tmp_path, running)))
    # The same secrets, one now given as its sha256: nothing changes.
    same = tmp_path / "same.toml"
    same.write_text(
        running.read_text(encoding="utf-8").replace(
            'token = "t"',
            'token_sha256 = "e3b98a4da31a127d4bde6e43033f66ba274cab0eb7eb1c70ec41402bf6273dd8"',
        ),
        encoding="utf-8",
    )
    code, lines, err = against_running(capsys, "-c", str(same))
    assert code == 0, err
    assert lines[1:2] == ["reload: nothing would change"]
    # New secrets: reported as changed, never shown.
    changed = tmp_path / "changed.toml"
    changed.write_text(
        running.read_text(encoding="utf-8")
        .replace("old-pass", "new-pass")
        .replace('token = "t"', 'token = "new-token"'),
        encoding="utf-8",
    )
    code, lines, err = against_running(capsys, "-c", str(changed))
    assert code == 0, err
    assert lines[1:3] == [
        "  backplane.url: changed  [restart needed: the backplane is connected at start]",
        "  auth.tokens[a]: changed",
    ]
    assert (
        lines[3]
        == "reload: 1 key would apply at once; 1 key would wait for a restart: backplane.url"
    )
    record_text = (tmp_path / "run" / config_diff.RECORD_NAME).read_text(encoding="utf-8")
    for secret in ("old-pass", "new-pass", "new-token", '"t"'):
        assert secret not in "\n".join(lines) + err + record_text
    assert redis["url"] not in record_text


def test_against_running_without_a_record_exits_2_naming_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "hubd.toml")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "from-env"))
    for args, directory in [
        ([], tmp_path / "from-env"),
        (["--runtime-dir", str(tmp_path / "given")], tmp_path / "given"),
    ]:
        code = main(["check-config", "-c", str(path), "--against-running", *args])
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        (line,) = err.strip().splitlines()
        assert line.startswith(f"hubd: no running configuration is recorded in {directory} "), line


def test_against_running_defaults_to_run_hubd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_RUNTIME_DIR", str(tmp_path / "run-hubd"))
    code = main(["check-config", "-c", str(write_config(tmp_path / "h.toml")), "--against-running"])
    _, err = capsys.readouterr()
    assert code == 2 and f"recorded in {tmp_path / 'run-hubd'} " in err, err


def test_against_running_checks_the_file_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "[hub]\nqueue_size = 0\n" + CREDENTIALS_TOML)
    code = main(["check-config", "-c", str(bad), "--against-running", "--runtime-dir", "/nope"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "hub.queue_size must be >= 1, got 0" in err and "/nope" not in err


# -- --instance N (systemd/hubd@.service) ----------------------------------------------------

SHARED = {
    "server": {"listen": ["127.0.0.1:8080"], "reuse_port": True},
    "backplane": {"kind": "redis", "url": "redis://127.0.0.1:6379/0"},
    "metrics": {"listen": "127.0.0.1:9188"},
}


def test_check_config_with_an_instance_shows_that_instances_metrics_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path / "hubd.toml", **SHARED)
    for args, shown in [
        ([], " reuse_port=on "),
        ([], " metrics=127.0.0.1:9188"),
        (["--instance", "1"], " metrics=127.0.0.1:9188 instance=1"),
        (["--instance", "3"], " metrics=127.0.0.1:9190 instance=3"),
    ]:
        assert main(["check-config", *args, str(path)]) == 0
        out, err = capsys.readouterr()
        summary = out.splitlines()[0]
        assert shown in summary + " ", summary
        assert err == ""


def test_usage_error_for_a_bad_instance_says_what_is_allowed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--instance", "x"])
    assert info.value.code == 2
    _, err = capsys.readouterr()
    assert err.strip().endswith(
        "argument --instance: --instance is 'x'; use a whole number from 1 to 65535 without "
        "leading zeros (the N of hubd@N.service)"
    ), err


def test_an_instance_moving_metrics_past_65535_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sections = {**SHARED, "metrics": {"listen": "127.0.0.1:65535"}}
    path = write_config(tmp_path / "hubd.toml", **sections)
    for command in ("check-config", "serve"):
        code = main([command, "--instance", "2", "-c", str(path)])
        out, err = capsys.readouterr()
        assert (code, out) == (2, ""), err
        assert err == (
            f"hubd: {path}: metrics.listen '127.0.0.1:65535' with --instance 2 would be port "
            "65536; ports are 0-65535: lower the port or the instance number\n"
        )


def test_against_running_with_an_instance_reads_its_runtime_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_RUNTIME_DIR", str(tmp_path / "hubd"))
    path = write_config(tmp_path / "hubd.toml", **SHARED)
    code = main(["check-config", "-c", str(path), "--against-running", "--instance", "2"])
    _, err = capsys.readouterr()
    assert code == 2 and f"recorded in {tmp_path / 'hubd-2'} " in err, err
    directory = tmp_path / "hubd-2"
    directory.mkdir()
    settings = load_settings(path)
    config_diff.write_record(str(directory), settings, settings.hub, config=str(path), instance=2)
    code, lines, err = against_running(capsys, "-c", str(path), "--instance", "2")
    assert code == 0, err
    assert lines[0].startswith("against the running hubd (pid "), lines
    assert ", instance 2, config " in lines[0], lines
    # The record holds the file's metrics.listen, not the instance's: nothing differs.
    assert lines[1] == "reload: nothing would change"
