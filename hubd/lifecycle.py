"""The life of a running hubd after start: the systemd watchdog, reloading on SIGHUP,
and on SIGTERM/SIGINT draining the hub with a last-resort exit at the end of the shutdown
budget. `hubd.service.run` wires these together."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import trio

from hubd import config_diff, reload, sdnotify
from hubd.core.close_codes import CLOSE_GOING_AWAY
from hubd.core.hub import Hub
from hubd.logs import configure as configure_logging
from hubd.logs import event
from hubd.settings import ConfigError, load_settings
from hubd.web.context import WebContext
from hubd.web.server_config import server_grace

# The daemon's own log, as the rest of the start and stop lines.
log = logging.getLogger("hubd")


async def watchdog(notifier: sdnotify.Notifier, interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds. It runs in the event loop with every
    connection, so a loop that stops scheduling (blocked, stuck) stops the pings and
    systemd restarts hubd."""
    while True:
        notifier.notify("WATCHDOG=1")
        await trio.sleep(interval)


def reload_config(
    ctx: WebContext,
    config_path: str,
    notifier: sdnotify.Notifier,
    log_handler: logging.Handler | None,
    *,
    instance: int | None = None,
) -> None:
    """Re-read the configuration and apply it; an invalid file changes nothing."""
    notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        new = load_settings(config_path)
    except ConfigError as exc:
        log.error("reload rejected, the running configuration stays: %s: %s", config_path, exc)
        notifier.notify("READY=1", "STATUS=reload rejected: see the log")
        return
    report = reload.apply(ctx, new)
    if log_handler is not None:
        configure_logging(log_handler, new.log.level, new.log.format)
    event(
        log,
        logging.INFO,
        "reloaded",
        config=config_path,
        credentials=len(new.auth.tokens) + len(new.auth.api_keys),
        revoked=report.revoked,
        narrowed=report.narrowed,
        changed=report.changed,
        restart_pending=report.restart_pending,
    )
    for item in report.kept:
        log.warning("reload: %s", item)
    record_running(ctx, config_path, instance=instance)
    status = "serving (configuration reloaded)"
    if report.restart_pending:
        pending = ", ".join(report.restart_pending)
        status = f"serving (configuration reloaded; restart needed for {pending})"
    notifier.notify("READY=1", f"STATUS={status}")


def record_running(ctx: WebContext, config_path: str, *, instance: int | None = None) -> None:
    """Record the running configuration (`ctx.settings`, with the values a reload kept for
    a restart) and the process's `instance` number in `$RUNTIME_DIRECTORY`, for `hubd
    check-config --against-running`. Without that variable nothing is written; a failure
    is logged and changes nothing else."""
    directory = config_diff.runtime_directory(os.environ)
    if directory is None:
        return
    try:
        config_diff.write_record(
            directory, ctx.settings, ctx.started.hub, config=config_path, instance=instance
        )
    except OSError as exc:
        log.warning(
            "cannot record the running configuration in %s: %s", directory, exc.strerror or exc
        )


async def watch_signals(
    signals: AsyncIterator[int], shutdown: trio.Event, reload_config: Callable[[], None]
) -> None:
    """SIGHUP calls `reload_config`; the first SIGTERM/SIGINT sets `shutdown`. Once
    `shutdown` is set, every further signal is logged and ignored."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if shutdown.is_set():
                log.info("SIGHUP ignored: draining")
            else:
                reload_config()
        elif shutdown.is_set():
            log.info("%s ignored: already draining", name)
        else:
            event(log, logging.INFO, "draining", signal=name)
            shutdown.set()


async def exit_at(deadline: float, hub: Hub) -> None:
    """Last resort: a peer that never reads can hold a send open (Hypercorn shields it),
    so when the shutdown budget is spent the process exits anyway."""
    await trio.sleep_until(deadline)
    log.warning(
        "stopped: shutdown_timeout reached with %d connection(s) not closed cleanly",
        len(hub.sessions),
    )
    logging.shutdown()
    os._exit(0)


async def drain(hub: Hub, until: float) -> None:
    """Refuse new work and ask every connection to close with 1001; wait until they have
    or until the trio time `until`."""
    hub.draining = True
    hub.close_all(CLOSE_GOING_AWAY, "server shutting down")
    with trio.move_on_at(until) as scope:
        await hub.wait_empty()
    if scope.cancelled_caught:
        log.warning("drain: %d connection(s) still open at the deadline", len(hub.sessions))


async def drain_for_shutdown(ctx: WebContext, notifier: sdnotify.Notifier) -> float:
    """Stop taking requests, arm the last-resort exit at the end of the shutdown budget
    and drain the hub, keeping the server's grace at the end of that budget. Returns the
    trio time of the exit."""
    ctx.ready = False
    notifier.notify("STOPPING=1", "STATUS=draining")
    timeout = ctx.settings.server.shutdown_timeout
    deadline = trio.current_time() + timeout
    trio.lowlevel.spawn_system_task(exit_at, deadline, ctx.hub)
    await drain(ctx.hub, deadline - server_grace(timeout))
    return deadline


__all__ = [
    "drain",
    "drain_for_shutdown",
    "exit_at",
    "record_running",
    "reload_config",
    "watch_signals",
    "watchdog",
]
