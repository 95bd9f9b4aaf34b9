"""`hubd serve --instance N`: what differs between the processes that run one
configuration file side by side (`server.reuse_port`, systemd/hubd@.service).

Everything in the file is shared but `metrics.listen`, which each process must bind for
itself (a scrape must reach the process it names): instance N binds it at its port plus
N-1. The number is the process's, not the file's, so a reload compares the file with the
file and never sees the offset. Instance N also records its running configuration in a
runtime directory of its own (`hubd-N` beside `hubd`).
"""

from __future__ import annotations

import re

from hubd.settings import ConfigError
from hubd.settings.fields import parse_listen

__all__ = ["instance_listen", "parse_instance", "runtime_dir_for"]

_NUMBER = re.compile(r"[1-9][0-9]{0,4}")


def parse_instance(text: str) -> int:
    """`text` as an instance number: 1 to 65535, written as systemd's `%i` of
    `hubd@2.service` gives it (no sign, no leading zero, so that `hubd-2`, the runtime
    directory, has one spelling). Raises `ValueError` with a sentence saying so."""
    if not _NUMBER.fullmatch(text) or int(text) > 65535:
        raise ValueError(
            f"--instance is {text!r}; use a whole number from 1 to 65535 without leading zeros "
            "(the N of hubd@N.service)"
        )
    return int(text)


def instance_listen(listen: str, instance: int | None) -> str:
    """`listen`, the value of `metrics.listen` (`host:port` or `[v6]:port`), with its
    port moved up by `instance` - 1;
    unchanged without an instance, and for port 0 (each process then gets a free port of
    its own). Raises `ConfigError` naming the key when the port would pass 65535."""
    host, port = parse_listen(listen)
    if instance is None or port == 0:
        return listen
    moved = port + instance - 1
    if moved > 65535:
        raise ConfigError(
            f"metrics.listen {listen!r} with --instance {instance} would be port {moved}; "
            "ports are 0-65535: lower the port or the instance number"
        )
    return f"[{host}]:{moved}" if ":" in host else f"{host}:{moved}"


def runtime_dir_for(default: str, instance: int | None) -> str:
    """The runtime directory of `instance` when the single daemon's is `default`:
    `/run/hubd` -> `/run/hubd-2` (hubd@.service's `RuntimeDirectory=hubd-%i`)."""
    return default if instance is None else f"{default}-{instance}"
