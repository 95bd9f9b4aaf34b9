"""The command line, run as real processes: `hubd --version`, `hubd check-config`,
`hubd serve` refusals, `python -m hubd`. Exit 0 on success, 2 with a clear message (never
a traceback) on usage or configuration errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hubd

from .helpers import HUBD, config_for, render_config

pytestmark = pytest.mark.e2e


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HUBD, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], *mentions: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip()
    for text in mentions:
        assert text in result.stderr, result.stderr


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text(render_config(config_for(hub={"queue_size": 77})), encoding="utf-8")
    return path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hubd.toml"
    path.write_text(text, encoding="utf-8")
    return path


CREDENTIALS = '[[auth.tokens]]\nname = "a"\ntoken = "t"\nroles = ["admin"]\n'


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert hubd.__version__ in result.stdout


def test_python_dash_m_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hubd", "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert hubd.__version__ in result.stdout


def test_check_config_good(good_config: Path) -> None:
    result = run("check-config", str(good_config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The summary, then the worst-case memory: the queues, the history.
    assert len(lines) == 3, result.stdout
    assert "77" in lines[0]  # the summary reflects the file
    assert lines[1].startswith("memory: queues up to ")
    assert "hub.queue_size 77 " in lines[1]
    assert lines[2].startswith("memory: history up to ")
    assert "Traceback" not in result.stderr
    assert not result.stderr  # nothing to warn about


def test_check_config_prints_the_worst_case_memory(tmp_path: Path) -> None:
    text = (
        "[hub]\nqueue_size = 100\nmax_publish_bytes = 1024\nhistory_max_bytes = 1048576\n"
        "[limits]\nmax_connections = 10\n" + CREDENTIALS
    )
    result = run("check-config", str(write(tmp_path, text)))
    assert result.returncode == 0, result.stderr
    _, queues, history = result.stdout.strip().splitlines()
    # 10 connections x (100 queued + 256 being written) frames x 9.2 KiB (1 KiB re-encoded
    # up to 4x, its envelope, kept twice, the objects): 32.0 MiB; 5 channels' worth: 16.0.
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
    tmp_path: Path, limits: str, warned: str
) -> None:
    path = write(tmp_path, f"[limits]\n{limits}\n" + CREDENTIALS)
    result = run("check-config", str(path))
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith(f"{path}: ok: ")
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"hubd: {path}: warning: limits."), line
    assert warned in line, line


def test_check_config_does_not_print_secrets(good_config: Path) -> None:
    result = run("check-config", str(good_config))
    assert "sub-token" not in result.stdout + result.stderr
    assert "pub-key" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "[hub]\nidle_timout = 5\n" + CREDENTIALS,
            "unknown key 'idle_timout' in [hub]",
            id="unknown-key",
        ),
        pytest.param(
            "[hub]\nqueue_size = 0\n" + CREDENTIALS,
            "hub.queue_size must be >= 1, got 0",
            id="queue_size-zero",
        ),
        pytest.param(
            "[limits]\nmax_connections = 0\n" + CREDENTIALS,
            "limits.max_connections",
            id="max_connections-zero",
        ),
        pytest.param(
            '[hub]\nslow_consumer = "block"\n' + CREDENTIALS, "hub.slow_consumer", id="bad-enum"
        ),
        pytest.param("[hubb]\n" + CREDENTIALS, "hubb", id="unknown-section"),
        pytest.param("[hub\n", "TOML", id="not-toml"),
        pytest.param("[hub]\n", "credentials", id="no-credentials"),
        pytest.param(
            '[hub]\nidle_timeout = "soon"\n' + CREDENTIALS,
            "hub.idle_timeout must be a number",
            id="wrong-type",
        ),
        pytest.param(
            '[server]\nlisten = ["nohost"]\n' + CREDENTIALS, "server.listen[0]", id="bad-listen"
        ),
        pytest.param(
            '[[auth.tokens]]\nname = "a"\ntoken_sha256 = "xyz"\nroles = ["admin"]\n',
            "auth.tokens[0].token_sha256",
            id="bad-digest",
        ),
        pytest.param(
            CREDENTIALS + '[[auth.api_keys]]\nname = "b"\nkey = "k"\nroles = ["root"]\n',
            "auth.api_keys[0].roles[0]",
            id="bad-role",
        ),
        pytest.param(
            CREDENTIALS.replace('roles = ["admin"]', 'roles = ["admin"]\nchannels = ["nope"]'),
            "auth.tokens[0].channels[0]",
            id="allow-list-unknown-channel",
        ),
    ],
)
def test_check_config_bad(tmp_path: Path, text: str, message: str) -> None:
    result = run("check-config", str(write(tmp_path, text)))
    assert_clean_failure(result, message)


def test_check_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_clean_failure(run("check-config", str(missing)), str(missing))


def test_check_config_directory(tmp_path: Path) -> None:
    assert_clean_failure(run("check-config", str(tmp_path)), str(tmp_path))


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--bogus"], id="top-level"),
        pytest.param(["serve", "--bogus"], id="serve"),
        pytest.param(["check-config", "--bogus", "x.toml"], id="check-config"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ],
)
def test_unknown_option_exits_2(args: list[str]) -> None:
    assert_clean_failure(run(*args))


def test_serve_without_credentials_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = ["127.0.0.1:0"]\n')
    assert_clean_failure(run("serve", "--config", str(path)), "credentials")


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = ["127.0.0.1:0"]\nlisten_on = 1\n' + CREDENTIALS)
    assert_clean_failure(run("serve", "--config", str(path)), "unknown key 'listen_on' in [server]")


def test_serve_with_missing_config_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    assert_clean_failure(run("serve", "--config", str(missing)), str(missing))
