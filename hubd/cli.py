"""Command line: `hubd serve`, `hubd check-config`, `hubd hash-secret`, `hubd --version`.
`serve` and `check-config` read `-c/--config PATH`, else $HUBD_CONFIG, else
/etc/hubd/hubd.toml (`check-config PATH` works too), and take `--instance N` for one of
several processes on one file (systemd/hubd@.service; `hubd.settings.instance`).
Exit codes: 0 ok, 2 usage or configuration error (a message, never a traceback)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from hubd import __version__, config_diff
from hubd.settings import ConfigError, Settings, load_settings
from hubd.settings.instance import instance_listen, parse_instance, runtime_dir_for

DEFAULT_CONFIG = "/etc/hubd/hubd.toml"
# Where systemd puts `RuntimeDirectory=hubd` (the daemon gets it as $RUNTIME_DIRECTORY).
DEFAULT_RUNTIME_DIR = "/run/hubd"


def _default_config() -> str:
    return os.environ.get("HUBD_CONFIG", DEFAULT_CONFIG)


def _instance(text: str) -> int:
    try:
        return parse_instance(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_INSTANCE_HELP = (
    "instance N of several processes on this file (systemd's hubd@N.service): metrics.listen's "
    "port plus N-1, the runtime directory hubd-N"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubd", description="Real-time infrastructure-event hub (WebSocket fan-out)."
    )
    parser.add_argument("--version", action="version", version=f"hubd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon in the foreground (logs to stderr)")
    serve.add_argument(
        "--config",
        "-c",
        default=_default_config(),
        help=f"TOML config file (default: $HUBD_CONFIG or {DEFAULT_CONFIG})",
    )
    serve.add_argument("--instance", metavar="N", type=_instance, help=_INSTANCE_HELP)
    check = sub.add_parser(
        "check-config",
        help="validate a config file; print a summary and the worst-case memory it allows",
        description="Validate a config file and load the TLS files it names. Prints a summary "
        "and the worst-case memory the limits allow; risky trusted_proxies ranges are warned "
        "about on stderr (exit status still 0). With --against-running, also prints key by "
        "key what reloading this file into the running hubd would change, and which of those "
        "changes need a restart.",
    )
    check.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help=f"TOML config file (default: $HUBD_CONFIG or {DEFAULT_CONFIG})",
    )
    check.add_argument("path", nargs="?", metavar="PATH", help="the same as -c PATH")
    check.add_argument(
        "--against-running",
        action="store_true",
        help="compare with the configuration the running hubd records in its runtime directory",
    )
    check.add_argument(
        "--runtime-dir",
        metavar="DIR",
        help=f"the running hubd's runtime directory (default: $RUNTIME_DIRECTORY, else "
        f"{DEFAULT_RUNTIME_DIR}, or {DEFAULT_RUNTIME_DIR}-N with --instance N)",
    )
    check.add_argument("--instance", metavar="N", type=_instance, help=_INSTANCE_HELP)
    hash_secret = sub.add_parser(
        "hash-secret",
        help="print the sha256 of a secret, for token_sha256 / key_sha256",
        description="Read a token or API key and print its sha256 (hex) for token_sha256 or "
        "key_sha256 in the config, so that the secret itself need not be in the file. "
        "Prompts (twice, without echo) on a terminal; --stdin reads one line instead. The "
        "secret is never printed.",
    )
    hash_secret.add_argument(
        "--stdin", action="store_true", help="read the secret from stdin (one line)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        if args.config is not None and args.path is not None and args.config != args.path:
            parser.error(f"check-config: two files given ({args.config!r} and {args.path!r})")
        if args.runtime_dir is not None and not args.against_running:
            parser.error("check-config: --runtime-dir goes with --against-running")
        path = args.config or args.path or _default_config()
        runtime_dir = None
        if args.against_running:
            runtime_dir = (
                args.runtime_dir
                or config_diff.runtime_directory(os.environ)
                or runtime_dir_for(DEFAULT_RUNTIME_DIR, args.instance)
            )
        return _check_config(path, runtime_dir, args.instance)
    if args.command == "serve":
        return _serve(args.config, args.instance)
    if args.command == "hash-secret":
        return _hash_secret(args.stdin)
    parser.print_help(sys.stderr)
    return 2


def _check_config(path: str, runtime_dir: str | None, instance: int | None = None) -> int:
    """`hubd check-config`; with `runtime_dir`, also what a reload would change; with
    `instance`, as that instance would run it (its metrics address)."""
    from hubd.budget import memory_lines
    from hubd.core.clientip import trusted_proxy_warnings
    from hubd.service import check_history_path, check_instance, check_tls

    try:
        settings = load_settings(path)
        check_tls(settings)  # the files the daemon would load at start
        check_history_path(settings)
        check_instance(settings, instance)
    except ConfigError as exc:
        print(f"hubd: {path}: {exc}", file=sys.stderr)
        return 2
    record = None
    if runtime_dir is not None:
        try:
            record = config_diff.read_record(runtime_dir)
        except config_diff.RecordError as exc:
            print(f"hubd: {exc}", file=sys.stderr)
            return 2
    print(f"{path}: ok: {settings.summary()} {_outside(settings, instance)}")
    for line in memory_lines(settings):
        print(line)
    # Risky but valid: warnings, and the exit status stays 0 (the file does load).
    limits = settings.limits
    for warning in trusted_proxy_warnings(limits.trusted_proxies, limits.client_ip_header):
        print(f"hubd: {path}: warning: {warning}", file=sys.stderr)
    if record is not None:
        assert runtime_dir is not None
        _print_reload(path, settings, record, runtime_dir)
    return 0


def _word(value: str) -> str:
    """`value` as one word of a key=value line (quoted when it holds a space)."""
    return json.dumps(value) if not value or any(c.isspace() or c == '"' for c in value) else value


def _outside(settings: Settings, instance: int | None = None) -> str:
    """What the summary adds on what hubd talks to: the backplane (the Redis URL without
    its password), TLS and its files, the metrics listener (the address `instance` binds),
    and the instance number when given."""
    backplane, server, metrics = settings.backplane, settings.server, settings.metrics
    parts = [f"backplane={backplane.kind}"]
    if backplane.kind == "redis":
        parts.append(f"url={_word(config_diff.safe_url(backplane.url))}")
    if server.tls_cert is not None and server.tls_key is not None:
        parts.append(f"tls=on cert={_word(server.tls_cert)} key={_word(server.tls_key)}")
    else:
        parts.append("tls=off")
    if not metrics.enabled:
        parts.append("metrics=off")
    elif metrics.listen is None:  # /metrics is on the main listeners (admin role)
        parts.append("metrics=main-listeners")
    else:
        parts.append(f"metrics={instance_listen(metrics.listen, instance)}")
    if instance is not None:
        parts.append(f"instance={instance}")
    return " ".join(parts)


def _keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _print_reload(
    path: str, settings: Settings, record: config_diff.Record, runtime_dir: str
) -> None:
    """Key by key, what reloading `settings` into the daemon of `record` would change."""
    running = record.settings
    new = record.align(settings)
    planned = config_diff.plan(running, record.started_hub, new)
    found = config_diff.changes(running, new, planned)
    which = "" if record.instance is None else f", instance {record.instance}"
    print(
        f"against the running hubd (pid {record.pid}{which}, config {record.config}, "
        f"recorded {record.recorded}):"
    )
    for change in found:
        print(f"  {change}")
    pending = [c.key for c in found if c.restart is not None]
    if not found:
        print("reload: nothing would change")
    else:
        live = len(found) - len(pending)
        line = f"reload: {_keys(live)} would apply at once"
        if pending:
            line += f"; {_keys(len(pending))} would wait for a restart: {', '.join(pending)}"
        print(line)
    if os.path.abspath(record.config) != os.path.abspath(path):
        print(f"note: the running hubd reloads {record.config}; put this file there first")
    if not _alive(record.pid):
        print(
            f"hubd: warning: {runtime_dir}/{config_diff.RECORD_NAME} was written by pid "
            f"{record.pid}, which is not running: it may be out of date",
            file=sys.stderr,
        )


def _serve(path: str, instance: int | None = None) -> int:
    from functools import partial

    import trio

    from hubd import sdnotify, service
    from hubd.logs import setup_logging

    try:
        settings = load_settings(path)
        service.check_tls(settings)
        service.check_history_path(settings)
        service.check_instance(settings, instance)
    except ConfigError as exc:
        print(f"hubd: {path}: {exc}", file=sys.stderr)
        return 2
    handler = setup_logging(settings.log.level, settings.log.format)
    from hubd.core.clientip import trusted_proxy_warnings

    limits = settings.limits
    for warning in trusted_proxy_warnings(limits.trusted_proxies, limits.client_ip_header):
        # As check-config says it, so that a risky file shows in the journal too.
        logging.getLogger("hubd").warning("configuration: %s", warning)
    try:
        listeners = service.open_all(settings, instance)
    except (service.ListenError, sdnotify.ActivationError) as exc:
        print(f"hubd: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(
            partial(service.run, settings, path, listeners, log_handler=handler, instance=instance)
        )
    except ConfigError as exc:  # found at start, before serving (hub.history_path)
        print(f"hubd: {path}: {exc}", file=sys.stderr)
        return 2
    return 0


class _SecretError(Exception):
    pass


def _read_secret(from_stdin: bool) -> str:
    """One secret, from stdin (its line ending removed) or typed twice at a prompt."""
    if from_stdin:
        text = sys.stdin.read()
        secret = text[:-1] if text.endswith("\n") else text
        secret = secret[:-1] if secret.endswith("\r") else secret
        if "\n" in secret:
            raise _SecretError("stdin holds more than one line; give one secret")
        return secret
    if not sys.stdin.isatty():
        raise _SecretError("stdin is not a terminal: pass --stdin to read the secret from it")
    from getpass import getpass

    secret = getpass("Secret: ")
    if getpass("Again: ") != secret:
        raise _SecretError("the two entries differ")
    return secret


def _hash_secret(from_stdin: bool) -> int:
    import hashlib

    try:
        secret = _read_secret(from_stdin)
        if not secret:
            raise _SecretError("the secret is empty")
        if secret != secret.strip():
            # hubd trims the credential a client sends, so this one could never match.
            raise _SecretError("the secret starts or ends with whitespace; hubd trims it")
    except _SecretError as exc:
        print(f"hubd: hash-secret: {exc}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("", file=sys.stderr)
        return 2
    print(hashlib.sha256(secret.encode()).hexdigest())
    return 0
