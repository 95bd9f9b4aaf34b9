"""Command line: `hubd serve`, `hubd check-config`, `hubd --version`. Exit codes: 0 ok,
2 usage or configuration error (a message, never a traceback)."""

from __future__ import annotations

import argparse
import os
import sys

from hubd import __version__
from hubd.settings import ConfigError, load_settings

DEFAULT_CONFIG = "/etc/hubd/hubd.toml"


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
        default=os.environ.get("HUBD_CONFIG", DEFAULT_CONFIG),
        help=f"TOML config file (default: $HUBD_CONFIG or {DEFAULT_CONFIG})",
    )
    check = sub.add_parser("check-config", help="validate a config file and print a summary")
    check.add_argument("path", help="TOML config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        from hubd.service import check_tls

        try:
            settings = load_settings(args.path)
            check_tls(settings)  # the files the daemon would load at start
        except ConfigError as exc:
            print(f"hubd: {args.path}: {exc}", file=sys.stderr)
            return 2
        print(f"{args.path}: ok: {settings.summary()}")
        return 0
    if args.command == "serve":
        return _serve(args.config)
    parser.print_help(sys.stderr)
    return 2


def _serve(path: str) -> int:
    from functools import partial

    import trio

    from hubd import sdnotify, service
    from hubd.logs import setup_logging

    try:
        settings = load_settings(path)
        service.check_tls(settings)
    except ConfigError as exc:
        print(f"hubd: {path}: {exc}", file=sys.stderr)
        return 2
    handler = setup_logging(settings.log.level, settings.log.format)
    try:
        listeners = service.open_all(settings)
    except (service.ListenError, sdnotify.ActivationError) as exc:
        print(f"hubd: {exc}", file=sys.stderr)
        return 1
    trio.run(partial(service.run, settings, path, listeners, log_handler=handler))
    return 0
