"""The composition root: builds the hub, the authenticator, metrics and the web app, binds
the sockets, serves them with Hypercorn's protocol code under hubd's own worker
(`hubd.web.seam`), tells systemd how it is doing, reloads on SIGHUP and drains on
SIGTERM/SIGINT (`hubd.lifecycle`). The only module that wires everything together."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import ssl
from dataclasses import dataclass
from functools import partial

import trio

from hubd import __version__, gc_policy, sdnotify
from hubd.backplane import Backplane, MemoryBackplane
from hubd.core.auth import Authenticator
from hubd.core.history_store import HistoryStore, StoreUnusable
from hubd.core.hub import Hub
from hubd.lifecycle import (
    drain_for_shutdown,
    record_running,
    reload_config,
    watch_signals,
    watchdog,
)
from hubd.logs import event
from hubd.metrics import Metrics
from hubd.settings import ConfigError, Settings, parse_listen
from hubd.settings.instance import instance_listen
from hubd.web.app import HubdApp
from hubd.web.context import WebContext
from hubd.web.seam.direct_write import expected_write_path
from hubd.web.seam.worker import serve
from hubd.web.server_config import BACKLOG, hypercorn_config, serve_options

log = logging.getLogger("hubd")


class ListenError(Exception):
    """A listen address cannot be bound; the message names it."""


def open_listeners(settings: Settings) -> list[socket.socket]:
    """Bind and listen on every `server.listen` address, before anything else starts, so
    a taken or foreign address fails at once with the address in the message. With
    `server.reuse_port`, each is bound with SO_REUSEPORT, shared with the other hubd
    processes of this user that bind it so."""
    sockets: list[socket.socket] = []
    # Accepted sockets inherit this: the kernel aborts a connection whose sent data stays
    # unacknowledged this long, which frees a writer parked on a peer that stopped reading.
    user_timeout_ms = _user_timeout_ms(settings)
    reuse_port = settings.server.reuse_port
    try:
        for item in settings.server.listen:
            sockets.append(_listen(item, user_timeout_ms, reuse_port=reuse_port))
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _user_timeout_ms(settings: Settings) -> int:
    return int(max(10.0, settings.hub.idle_timeout) * 1000)


def _listen(item: str, user_timeout_ms: int, *, reuse_port: bool = False) -> socket.socket:
    """One listening socket on `item`; `reuse_port` sets SO_REUSEPORT (the main listeners
    only: the metrics listener is each process's own). Raises `ListenError`."""
    host, port = parse_listen(item)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {item}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, _so_reuseport(item), 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        hint = ""
        if reuse_port and exc.errno == errno.EADDRINUSE:
            # Linux shares a port only among sockets that all set SO_REUSEPORT and were
            # opened by the same user: a different DynamicUser per unit is the usual cause.
            hint = (
                " (server.reuse_port = true shares it only with processes that set it too "
                "and run as the same user)"
            )
        raise ListenError(f"cannot listen on {item}: {exc.strerror or exc}{hint}") from None
    return sock


def _so_reuseport(item: str) -> int:
    option: int | None = getattr(socket, "SO_REUSEPORT", None)
    if option is None:
        raise ListenError(
            f"cannot listen on {item}: server.reuse_port = true needs SO_REUSEPORT, which "
            "this system does not have"
        )
    return option


def check_tls(settings: Settings) -> None:
    """Load the TLS certificate and key once before serving, so that a bad file fails at
    start naming the key (`ConfigError`), not deep inside the first handshake."""
    server = settings.server
    if server.tls_cert is None or server.tls_key is None:
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for key in ("tls_cert", "tls_key"):
        path = getattr(server, key)
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"server.{key}: cannot read {path!r}: {exc.strerror}") from None
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"server.tls_cert / server.tls_key: {server.tls_cert!r} and {server.tls_key!r} are "
            f"not a PEM certificate chain and its private key ({exc.reason or exc})"
        ) from None


def check_history_path(settings: Settings) -> None:
    """The cheap part of opening `hub.history_path`, without touching the file (a running
    hubd holds it locked): its directory exists and it is not a directory itself. Raises
    `ConfigError` naming the key; the daemon opens the file itself at start."""
    path = settings.hub.history_path
    if not path:
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ConfigError(
            f"hub.history_path: the directory {directory!r} does not exist; create it "
            "(writable by hubd) or change the path"
        )
    if os.path.isdir(path):
        raise ConfigError(f"hub.history_path: {path!r} is a directory; name a file in it")


def check_instance(settings: Settings, instance: int | None) -> None:
    """The metrics address instance N binds (`metrics.listen`'s port plus N-1) is a
    port. Raises `ConfigError` naming the key otherwise."""
    if settings.metrics.enabled and settings.metrics.listen is not None:
        instance_listen(settings.metrics.listen, instance)


async def open_history(settings: Settings, hub: Hub) -> HistoryStore | None:
    """With `hub.history_path` set, load the history kept there into `hub` (same epoch,
    numbering continued) and return the store to run; None when it is off. Raises
    `ConfigError` naming the key when the file cannot be used: a node that was told to
    keep its history must not silently start without it."""
    path = settings.hub.history_path
    if not path:
        return None
    store = HistoryStore(path)
    try:
        hub.ids = await store.open(hub.history)
    except StoreUnusable as exc:
        raise ConfigError(f"hub.history_path: {exc}") from None
    hub.last_seq = hub.ids.seq
    return store


@dataclass
class Listeners:
    """Every socket hubd serves, bound (or received from systemd) before anything starts."""

    main: list[socket.socket]
    metrics: socket.socket | None = None
    activated: bool = False  # the main sockets came from systemd (LISTEN_FDS)

    def close(self) -> None:
        for sock in [*self.main, *([self.metrics] if self.metrics else [])]:
            sock.close()


def open_all(settings: Settings, instance: int | None = None) -> Listeners:
    """The main sockets: passed by systemd socket activation when present, else bound from
    `server.listen`; plus the metrics socket when `metrics.listen` is set, at its port plus
    `instance` - 1 for instance N of several (`hubd serve --instance N`).
    Raises `ListenError` or `ActivationError` naming the address or descriptor, and
    `ConfigError` when the instance moves the metrics port past 65535."""
    activated = sdnotify.listen_fds()
    for sock in activated:  # as open_listeners does for the sockets it binds
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, _user_timeout_ms(settings))
    main = activated or open_listeners(settings)
    metrics: socket.socket | None = None
    if settings.metrics.enabled and settings.metrics.listen is not None:
        try:
            address = instance_listen(settings.metrics.listen, instance)
            metrics = _listen(address, _user_timeout_ms(settings))
        except (ListenError, ConfigError):
            for sock in main:
                sock.close()
            raise
    return Listeners(main, metrics, activated=bool(activated))


def build_app(settings: Settings) -> tuple[WebContext, HubdApp]:
    """The hub, its backplane, the authenticator, metrics (when enabled) and the ASGI app,
    wired together; nothing runs yet and nothing is bound. `run` serves what this builds
    (the in-process web tests drive the app directly)."""
    hub = Hub(settings.hub, settings.limits)
    backplane = make_backplane(settings, hub)
    ctx = WebContext(
        settings=settings,
        hub=hub,
        auth=Authenticator(settings.auth),
        trusted_proxies=settings.limits.trusted_networks,
        backplane=backplane,
    )
    if settings.metrics.enabled:
        ctx.metrics = Metrics(hub, ctx.http_counts, backplane)
    return ctx, HubdApp(ctx)


async def run(
    settings: Settings,
    config_path: str,
    listeners: Listeners,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    log_handler: logging.Handler | None = None,
    instance: int | None = None,
) -> None:
    """Serve `listeners` (from `open_all`) until SIGTERM/SIGINT, then drain. SIGHUP reloads
    `config_path`. `instance` (`hubd serve --instance N`) is named in the `starting` line,
    the systemd status and the record of the running configuration.

    Draining refuses new connections and publishes (503), closes every WebSocket with 1001
    after flushing what was queued for it, and returns within `server.shutdown_timeout`;
    a connection whose peer will not take its last frames is cut when that time is up.
    With `hub.history_path`, the history is loaded before serving and, once drained (no
    publish can follow), written out with the clean mark; raises `ConfigError` before
    serving when that file cannot be used."""
    notifier = sdnotify.Notifier.from_environ()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        ctx, app = build_app(settings)
        hub, backplane = ctx.hub, ctx.backplane
        shutdown = trio.Event()
        _log_starting(settings, config_path, listeners, instance)
        try:
            store = await open_history(settings, hub)
        except ConfigError:
            listeners.close()
            raise
        # For `hubd check-config --against-running`.
        record_running(ctx, config_path, instance=instance)
        reloader = partial(
            reload_config, ctx, config_path, notifier, log_handler, instance=instance
        )
        async with trio.open_nursery() as outer:
            outer.start_soon(watch_signals, signals, shutdown, reloader)
            await outer.start(backplane.run)
            if store is not None:
                if ctx.metrics is not None:
                    ctx.metrics.watch_history(store)
                await outer.start(store.run)
            deadline = await _serve_until_drained(
                settings,
                ctx,
                app,
                listeners,
                notifier=notifier,
                shutdown=shutdown,
                nursery=outer,
                task_status=task_status,
                instance=instance,
            )
            await _release(backplane, store, deadline)
            outer.cancel_scope.cancel()
        event(log, logging.INFO, "stopped")
        notifier.close()


def _log_starting(
    settings: Settings, config_path: str, listeners: Listeners, instance: int | None
) -> None:
    """The `starting` line: what this process is about to serve, and how; `instance=N`
    only for one of several processes on one file."""
    named: dict[str, object] = {} if instance is None else {"instance": instance}
    event(
        log,
        logging.INFO,
        "starting",
        version=__version__,
        **named,
        config=config_path,
        listen=[_address(s) for s in listeners.main],
        activated=listeners.activated,
        # Passed sockets were bound by systemd, with whatever its socket unit said.
        reuse_port=settings.server.reuse_port and not listeners.activated,
        tls=settings.server.tls,
        backplane=settings.backplane.kind,
        metrics=_address(listeners.metrics) if listeners.metrics else None,
        history=settings.hub.history_path or None,
        write=expected_write_path(settings.server.tls, settings.hub.compression),
    )


async def _serve_until_drained(
    settings: Settings,
    ctx: WebContext,
    app: HubdApp,
    listeners: Listeners,
    *,
    notifier: sdnotify.Notifier,
    shutdown: trio.Event,
    nursery: trio.Nursery,
    task_status: trio.TaskStatus[list[str]],
    instance: int | None,
) -> float:
    """Serve `app` on `listeners` (reporting the bound addresses through `task_status`)
    until `shutdown` is set, then drain the hub and stop the server. Ready (the `ready`
    line, `READY=1`, `/v1/ready`) once the backplane is connected too: a cluster node
    that cannot reach Redis at start serves `/metrics` and `/v1/health` meanwhile, and
    its `/v1/ready` answers 503. Returns the trio time at which the process exits
    whatever is left (`hubd.lifecycle.exit_at`)."""
    stop_server = trio.Event()
    async with trio.open_nursery() as server:
        binds: list[str] = await server.start(
            partial(
                serve,
                app,
                hypercorn_config(settings, listeners.main, listeners.metrics),
                serve_options(settings),
                shutdown_trigger=stop_server.wait,
            )
        )
        _mark_serving(ctx, listeners)
        task_status.started(binds)
        if await _backplane_connected(ctx.backplane, notifier, shutdown):
            _mark_ready(ctx, notifier, binds, nursery, instance)
        await shutdown.wait()
        deadline = await drain_for_shutdown(ctx, notifier)
        stop_server.set()
    return deadline


def _mark_serving(ctx: WebContext, listeners: Listeners) -> None:
    """The server accepts on every listener: the metrics listener answers from now on."""
    if listeners.metrics is not None:
        host, port = listeners.metrics.getsockname()[:2]
        ctx.metrics_address = (host, port)
    listeners.close()  # Hypercorn serves its own duplicates


async def _backplane_connected(
    backplane: Backplane, notifier: sdnotify.Notifier, shutdown: trio.Event
) -> bool:
    """Wait until the backplane is connected (at once for the in-memory one): True then,
    False when a stop signal comes first. The wait shows in `systemctl status`; why
    Redis cannot be reached is logged by the backplane."""
    if backplane.healthy:
        return True
    notifier.notify(f"STATUS=waiting for the backplane: {backplane.status}")
    connected = False
    async with trio.open_nursery() as waiting:

        async def until_connected() -> None:
            nonlocal connected
            await backplane.wait_healthy()
            connected = True
            waiting.cancel_scope.cancel()

        async def until_shutdown() -> None:
            await shutdown.wait()
            waiting.cancel_scope.cancel()

        waiting.start_soon(until_connected)
        waiting.start_soon(until_shutdown)
    return connected


def _mark_ready(
    ctx: WebContext,
    notifier: sdnotify.Notifier,
    binds: list[str],
    nursery: trio.Nursery,
    instance: int | None,
) -> None:
    """Serving, and the backplane connected: take requests, tell systemd, start the
    watchdog."""
    ctx.ready = True
    gc_policy.apply()
    event(log, logging.INFO, "ready", listening=binds)
    who = "" if instance is None else f"instance {instance} "
    notifier.notify("READY=1", f"STATUS={who}serving on {' '.join(binds)}")
    interval = sdnotify.watchdog_interval()
    if interval is not None:
        nursery.start_soon(watchdog, notifier, interval)


async def _release(backplane: Backplane, store: HistoryStore | None, deadline: float) -> None:
    """After the server stopped: leave the backplane and write the history out."""
    with trio.move_on_after(2) as release_scope:
        release_scope.shield = True
        await backplane.aclose()  # frees this node's client IPs at once
    if store is not None:
        # Drained: nothing more can be published, so the last seq is final. If this
        # does not finish before exit_at, the file stays "running" and the next
        # start treats the stop as unclean (honest, just less complete).
        with trio.CancelScope(deadline=deadline, shield=True):
            await store.close()


def make_backplane(settings: Settings, hub: Hub) -> Backplane:
    """The backplane `[backplane] kind` asks for (Redis is imported only when used)."""
    if settings.backplane.kind == "redis":
        from hubd.backplane.redis import RedisBackplane

        return RedisBackplane(hub, settings.backplane)
    return MemoryBackplane(hub)


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
