"""`hubctl`: the command line, its options, and what each failure prints and exits with.

Exit codes: 0 ok; 1 the server refused or could not be reached; 2 usage, configuration,
credential, authorization or conflict (401, 403, 409) errors; 130 (SIGINT) or 143
(SIGTERM) for `publish --stdin` stopped by that signal. Messages go to stderr and never
contain a secret.
"""

from __future__ import annotations

import argparse
import ipaddress
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
    NetworkError,
)
from hubd.client.endpoint import Endpoint
from hubd.hubctl import commands
from hubd.hubctl.config import ENV_URL, ConfigError, Settings, dev_credential_hint, load
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
    source = getattr(args, "source_address", None)
    if source is not None:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            parser.error(f"--source-address {source!r} is not an IP address (e.g. 127.0.0.2)")


def another_source_address(url: str, source_address: str | None) -> str | None:
    """A loopback address to connect from instead of `source_address` (None: the
    default, 127.0.0.1), when `url` is on this machine over IPv4: every 127.x.x.x is
    (on Linux). None when the server is elsewhere: which other addresses this machine
    has is for the user to say."""
    host = Endpoint.parse(url).host.lower()
    if host != "localhost":
        try:
            if not ipaddress.IPv4Address(host).is_loopback:
                return None
        except ValueError:
            return None  # a name, or IPv6 (::1 is the only IPv6 loopback address)
    try:
        current = ipaddress.IPv4Address(source_address or "127.0.0.1")
    except ValueError:
        current = ipaddress.IPv4Address("127.0.0.1")
    if current.is_loopback and (current + 1).is_loopback:
        return str(current + 1)
    return "127.0.0.2"


def _ip_in_use(exc: ConflictError, settings: Settings, source_address: str | None) -> str:
    other = another_source_address(settings.url, source_address)
    elsewhere = (
        f"--source-address {other}"
        if other
        else "--source-address and another of this machine's addresses"
    )
    return (
        f"hubd already has a subscriber connection from this machine's address "
        f"(409 {exc.code}): {exc.message}. whoami opens such a connection too. Close the "
        f"other one (another hubctl subscribe?), or connect from another address with "
        f"{elsewhere}, or ask whoever runs hubd about limits.one_connection_per_ip (false "
        "turns the rule off)."
    )


def _network_hint(exc: NetworkError, settings: Settings, source_address: str | None) -> str:
    """What to check when hubd could not be reached: the address it was asked to
    connect from, or the URL nobody configured."""
    if source_address is not None and "assign requested address" in str(exc).lower():
        hint = f" (--source-address {source_address} is not an address of this machine"
        if ipaddress.ip_address(source_address).is_loopback:
            hint += f"; on macOS add it first: sudo ifconfig lo0 alias {source_address}"
        return hint + ")"
    if settings.default_url and not exc.request_sent:
        return (
            f" ({settings.url} is hubctl's default URL, as no --url, {ENV_URL} or url in "
            f"{settings.config_path} says otherwise: start hubd there with `make run`, or "
            "say where yours is)"
        )
    return ""


def explain(
    exc: ClientError,
    settings: Settings,
    *,
    command: str | None = None,
    source_address: str | None = None,
) -> tuple[str, int]:
    """The words and the exit code for a failure of `command` (`subscribe`, ...);
    `source_address` is --source-address."""
    dev_hint = dev_credential_hint(settings.url, command, settings.credentials)
    if isinstance(exc, AuthError):
        return (
            f"the server did not accept the credential from {settings.credential_source} "
            f"(401 {exc.code}): {exc.message}. Check the token or API key, or get a current "
            f"one from whoever runs hubd{dev_hint}.",
            EXIT_USAGE,
        )
    if isinstance(exc, ForbiddenError):
        return (
            f"the credential from {settings.credential_source} is valid but not allowed to do "
            f"this (403 {exc.code}): {exc.message}{dev_hint}",
            EXIT_USAGE,
        )
    if isinstance(exc, ConflictError):
        if exc.code == "ip_in_use":
            return _ip_in_use(exc, settings, source_address), EXIT_USAGE
        return f"the server refused (409 {exc.code}): {exc.message}", EXIT_USAGE
    if isinstance(exc, HubdError) and exc.outcome_unknown:
        return (
            f"the server could not tell whether it was done ({exc.status} {exc.code}): "
            f"{exc.message}",
            EXIT_ERROR,
        )
    if isinstance(exc, HubdError):
        return f"the server refused ({exc.status} {exc.code}): {exc.message}", EXIT_ERROR
    if isinstance(exc, NetworkError):
        return str(exc) + _network_hint(exc, settings, source_address), EXIT_ERROR
    return str(exc), EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _check_usage(parser, args)
    try:
        settings = load(url=args.url, token=args.token, api_key=args.api_key, command=args.command)
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
        message, code = explain(
            exc,
            settings,
            command=args.command,
            source_address=getattr(args, "source_address", None),
        )
        print(f"{PROG}: {printable(message)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        # Only before a command has set up its own handling (subscribe closes cleanly).
        return 130
