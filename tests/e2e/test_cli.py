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
    assert len(lines) == 1, result.stdout
    assert "77" in lines[0]  # the summary reflects the file
    assert "Traceback" not in result.stderr


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
