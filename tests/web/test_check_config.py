"""`hubd check-config` in process (`hubd.cli.main`): exit 0 with the summary and the
worst-case memory, warnings on stderr, exit 2 with a message naming the key path and no
traceback; the command line's usage errors. tests/e2e/test_cli.py runs the real command
once, and keeps what needs a real process (`--version`, `python -m hubd`, `serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from hubd.cli import main

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
    code, _, err = check(good, capsys)
    assert code == 0, err
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
        pytest.param(["check-config"], id="no-path"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: hubd" in err and "Traceback" not in out + err
