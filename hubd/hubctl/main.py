"""`hubctl`: the command line, its options, and what each failure prints and exits with.

Exit codes: 0 ok; 1 the server refused or could not be reached; 2 usage, configuration,
credential, authorization or conflict (401, 403, 409) errors; 130 (SIGINT) or 143
(SIGTERM) for `publish --stdin` stopped by that signal. Messages go to stderr and never
contain a secret.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from hubd.client import (
    AuthError,
    ClientError,
    ConflictError,
    ForbiddenError,
    HubdError,
)
from hubd.hubctl import commands
from hubd.hubctl.config import ConfigError, Settings, load
from hubd.hubctl.errors import UsageError
from hubd.hubctl.output import printable
from hubd.hubctl.parser import PROG, build_parser

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]] = {
    "subscribe": commands.subscribe,
    "publish": commands.publish,
    "unsubscribe": commands.unsubscribe,
    "whoami": commands.whoami,
    "clients": commands.clients,
    "stats": commands.stats,
}


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; exits 2 through parser.error()."""
    if args.command == "publish":
        if args.stdin:
            if args.channel or args.message or args.body or args.body_file or args.client_id:
                parser.error("publish --stdin takes no CHANNEL, MESSAGE, --body or --client-id")
            if args.max_request_bytes is not None and args.max_request_bytes <= 2:
                parser.error("--max-request-bytes is too small")
        elif not (args.channel and args.message):
            parser.error("publish needs CHANNEL and MESSAGE (or --stdin)")
        elif args.max_request_bytes is not None:
            parser.error("--max-request-bytes goes with --stdin")
    if getattr(args, "timeout", None) is not None and args.timeout <= 0:
        parser.error("--timeout must be positive")


def explain(exc: ClientError, settings: Settings) -> tuple[str, int]:
    """The words and the exit code for a failure."""
    if isinstance(exc, AuthError):
        return (
            f"the server did not accept the credential from {settings.credential_source} "
            f"(401 {exc.code}): {exc.message}. Check the token or API key, or get a current "
            "one from whoever runs hubd.",
            EXIT_USAGE,
        )
    if isinstance(exc, ForbiddenError):
        return (
            f"the credential from {settings.credential_source} is valid but not allowed to do "
            f"this (403 {exc.code}): {exc.message}",
            EXIT_USAGE,
        )
    if isinstance(exc, ConflictError):
        if exc.code == "ip_in_use":
            return (
                f"hubd already has a subscriber connection from this machine's address "
                f"(409 {exc.code}): {exc.message}. hubd allows one per client IP: close the "
                "other one (another hubctl subscribe?) and retry.",
                EXIT_USAGE,
            )
        return f"the server refused (409 {exc.code}): {exc.message}", EXIT_USAGE
    if isinstance(exc, HubdError) and exc.outcome_unknown:
        return (
            f"the server could not tell whether it was done ({exc.status} {exc.code}): "
            f"{exc.message}",
            EXIT_ERROR,
        )
    if isinstance(exc, HubdError):
        return f"the server refused ({exc.status} {exc.code}): {exc.message}", EXIT_ERROR
    return str(exc), EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _check_usage(parser, args)
    try:
        settings = load(url=args.url, token=args.token, api_key=args.api_key)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in settings.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    try:
        return trio.run(partial(COMMANDS[args.command], args, settings))
    except UsageError as exc:
        print(f"{PROG}: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as exc:
        message, code = explain(exc, settings)
        print(f"{PROG}: {printable(message)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        # Only before a command has set up its own handling (subscribe closes cleanly).
        return 130
