"""`hubd hash-secret`, run as a real process: the sha256 hex for token_sha256 /
key_sha256, from stdin or typed at a prompt (twice, not echoed); the secret itself is
never printed; refusals exit 2 with a message."""

from __future__ import annotations

import hashlib
import os
import pty
import select
import signal
import subprocess
import time

import pytest

from ..helpers import TOKENS
from .helpers import HUBD

pytestmark = pytest.mark.e2e


def hash_secret(stdin: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HUBD, "hash-secret", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_stdin_secret_gives_the_digest_the_server_matches() -> None:
    result = hash_secret(b"hashed-token\n", "--stdin")
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    # The shared test config authenticates "hashed-token" by exactly this digest.
    hashed = next(t for t in TOKENS if t["name"] == "hashed")
    assert digest == hashed["token_sha256"] == hashlib.sha256(b"hashed-token").hexdigest()
    assert "hashed-token" not in result.stdout + result.stderr


def test_crlf_and_no_final_newline_are_the_same_secret() -> None:
    digests = {hash_secret(s, "--stdin").stdout for s in (b"abc", b"abc\n", b"abc\r\n")}
    assert digests == {hashlib.sha256(b"abc").hexdigest() + "\n"}


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        (b"", ("--stdin",), "the secret is empty"),
        (b"one\ntwo\n", ("--stdin",), "more than one line"),
        (b" padded\n", ("--stdin",), "starts or ends with whitespace"),
        (b"abc\n", (), "stdin is not a terminal: pass --stdin"),
    ],
)
def test_refusals_exit_2_with_a_message(stdin: bytes, args: tuple[str, ...], message: str) -> None:
    result = hash_secret(stdin, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr


def run_on_terminal(*typed: str) -> tuple[int, str]:
    """Run `hubd hash-secret` on a pseudo-terminal, answering each prompt with the next of
    `typed`; the exit status and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes hubd on the terminal
        os.execv(HUBD, [HUBD, "hash-secret"])
    shown = b""
    answered = 0
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            # Answer only once a prompt is shown: getpass discards what was typed before
            # it turned echo off (TCSAFLUSH).
            prompts = shown.count(b"Secret:") + shown.count(b"Again:")
            while answered < min(prompts, len(typed)):
                os.write(fd, typed[answered].encode() + b"\n")
                answered += 1
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_prompt_does_not_echo_and_prints_only_the_digest() -> None:
    code, shown = run_on_terminal("s3cret-typed", "s3cret-typed")
    assert code == 0, shown
    assert "Secret:" in shown and "Again:" in shown
    assert "s3cret-typed" not in shown
    assert hashlib.sha256(b"s3cret-typed").hexdigest() in shown


def test_prompt_refuses_two_different_entries() -> None:
    code, shown = run_on_terminal("first-try", "second-try")
    assert code == 2
    assert "the two entries differ" in shown
    assert "first-try" not in shown and "second-try" not in shown
