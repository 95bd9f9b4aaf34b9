"""A throwaway redis-server for the benchmarks that need one (`bench cluster`, `bench.lag`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time


class RedisProcess:
    """redis-server on a free loopback port, without persistence, its files in `directory`
    (the current one when None). Raises SystemExit naming `needed_by` when redis-server is
    not installed, RuntimeError when it does not answer within 10 s."""

    def __init__(self, needed_by: str, directory: str | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit(f"{needed_by} needs redis-server (apt-get install -y redis-server)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        command = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no"]
        if directory is not None:
            command += ["--dir", directory]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
