"""What every benchmark does with the `hubd serve` it starts: wait for its `ready` line,
and stop it."""

from __future__ import annotations

import re
import subprocess
import time

# hubd's `ready` line when it listens on one loopback port (how the benches configure it).
READY = re.compile(r"\bready listening=http://127\.0\.0\.1:(\d+)")


def wait_ready(proc: subprocess.Popen[bytes], log: str, timeout: float) -> int:
    """The port hubd reports in its `ready` line in the file `log`, once it is there;
    0 when `proc` exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log, errors="replace") as f:
            if m := READY.search(f.read()):
                return int(m[1])
        time.sleep(0.05)
    return 0


def terminate(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; the exit status of a process that
    stopped on SIGTERM (or had already exited), None if it had to be killed."""
    code = proc.poll()
    if code is not None:
        return code
    proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
