"""The README's quick start, run as written: the blocks of README.md marked
`<!-- quickstart: server -->`, `<!-- quickstart: subscribe -->` and
`<!-- quickstart: publish -->` are run with bash from the project root, each as a user
would in its own terminal: the server (`make run`, port 8080), a subscriber, then a
publish, whose event the subscriber must print. If the README changes, this runs the new
text; if the commands stop working, this fails."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"<!-- quickstart: (\w+) -->\s*```sh\n(.*?)```", re.S)
HEALTH = "http://127.0.0.1:8080/v1/health"
STATS = "http://127.0.0.1:8080/v1/ws/stats"
ADMIN = {"Authorization": "Bearer dev-admin-token"}
WAIT = 120.0  # `make run` may have to install the runtime dependencies first


def quickstart() -> dict[str, str]:
    """The README's quick-start blocks by name, as written."""
    found = dict(BLOCK.findall((ROOT / "README.md").read_text()))
    assert {"server", "subscribe", "publish"} <= set(found), sorted(found)
    return found


class Terminal:
    """One command run by bash in its own process group, its output collected."""

    def __init__(self, script: str) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.proc.poll() is None or text in self.output, (
                f"exited {self.proc.returncode} before printing {text!r}:\n{self.output}"
            )
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output}"
            time.sleep(0.05)

    def interrupt(self) -> int:
        """Ctrl-C, as in a terminal: SIGINT to the whole process group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_readme_quick_start_runs_as_written() -> None:
    blocks = quickstart()
    assert port_free(8080), "the quick start serves on 127.0.0.1:8080, which is taken"
    server = Terminal(blocks["server"])
    terminals = [server]
    try:
        wait_until(
            lambda: httpx.get(HEALTH, timeout=2).status_code == 200,
            WAIT,
            f"make run never answered {HEALTH}:\n{server.output}",
        )
        subscriber = Terminal(blocks["subscribe"])
        terminals.append(subscriber)
        wait_until(
            lambda: httpx.get(STATS, headers=ADMIN, timeout=2).json()["connections"] == 1,
            30,
            f"the subscriber never connected:\n{subscriber.output}",
        )
        publish = subprocess.run(
            ["bash", "-c", blocks["publish"]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert publish.returncode == 0, publish.stdout + publish.stderr
        subscriber.wait_for("VM_STATE_CHANGED", 30)
    finally:
        codes = [t.interrupt() for t in reversed(terminals)]
    assert port_free(8080), "the server outlived Ctrl-C"
    assert all(code in (0, 130, -2) for code in codes), (codes, server.output)
    assert "Traceback" not in server.output + "".join(t.output for t in terminals)
