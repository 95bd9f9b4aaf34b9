"""systemd integration without a dependency: the notify protocol (one datagram per state
change on `$NOTIFY_SOCKET`) and socket activation (listening sockets passed from fd 3 on,
announced by `$LISTEN_FDS` / `$LISTEN_PID`).

Outside systemd both are no-ops: no `NOTIFY_SOCKET` means nothing is sent, no
`LISTEN_FDS` means hubd binds `server.listen` itself.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("hubd")

SD_LISTEN_FDS_START = 3


class ActivationError(Exception):
    """A socket passed by systemd cannot be served; the message says which and why."""


class Notifier:
    """Sends `sd_notify` states ("READY=1", "STOPPING=1", "WATCHDOG=1", ...).

    `notify` never raises and never blocks: a lost datagram must not take the daemon
    down, it is logged once instead."""

    def __init__(self, address: str | None) -> None:
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if not address:
            return
        if address.startswith("@"):  # abstract namespace
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *states: str) -> bool:
        """Send `states` as one datagram ("READY=1", "STATUS=..."). Returns whether it went."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: MutableMapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled
    advises; None when systemd asked for no watchdog (or asked another process)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; no watchdog pings", usec)
        return None
    return value / 2_000_000 if value > 0 else None


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (socket activation), in order.

    Empty when none were passed (or they were meant for another process). The variables
    are removed from the environment so that no child process inherits them."""
    env = os.environ if environ is None else environ
    count = env.pop("LISTEN_FDS", None)
    pid = env.pop("LISTEN_PID", None)
    env.pop("LISTEN_FDNAMES", None)
    if not count:
        return []
    if pid != str(os.getpid()):
        log.warning(
            "LISTEN_FDS is set for process %s, not this one (%d); ignored", pid, os.getpid()
        )
        return []
    try:
        n = int(count)
    except ValueError:
        log.warning("LISTEN_FDS=%r is not an integer; ignored", count)
        return []
    sockets: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"LISTEN_FDS: fd {fd} is not a socket ({exc})") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ActivationError(
                f"LISTEN_FDS: fd {fd} is not a listening TCP socket; use ListenStream= in the "
                "socket unit"
            )
        sock.set_inheritable(False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
