"""The command line, run as real processes: `hubd --version`, `python -m hubd`, one real
`hubd check-config`, and `hubd serve` refusing a bad config: exit 0 on success, 2 with a
clear message (never a traceback) on a configuration error. Every check-config case and
the usage errors run in process in tests/web/test_check_config.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hubd

from ..helpers import CREDENTIALS_TOML, write_config
from .helpers import HUBD

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


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hubd.toml"
    path.write_text(text, encoding="utf-8")
    return path


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


def test_check_config_good(tmp_path: Path) -> None:
    path = write_config(tmp_path / "good.toml", hub={"queue_size": 77})
    result = run("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The summary, then the worst-case memory: the queues, the history.
    assert len(lines) == 3, result.stdout
    assert lines[0].startswith(f"{path}: ok: ") and "77" in lines[0]
    assert lines[0].endswith(" backplane=memory tls=off metrics=main-listeners"), lines[0]
    assert lines[1].startswith("memory: queues up to ")
    assert lines[2].startswith("memory: history up to ")
    assert not result.stderr  # nothing to warn about, and no traceback


def test_serve_without_credentials_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = ["127.0.0.1:0"]\n')
    assert_clean_failure(run("serve", "--config", str(path)), "credentials")


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nlisten = ["127.0.0.1:0"]\nlisten_on = 1\n' + CREDENTIALS_TOML)
    assert_clean_failure(run("serve", "--config", str(path)), "unknown key 'listen_on' in [server]")


def test_serve_with_missing_config_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    assert_clean_failure(run("serve", "--config", str(missing)), str(missing))
