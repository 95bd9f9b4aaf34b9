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

from hubd import __version__
from hubd.client import (
    AuthError,
    ClientError,
    ConflictError,
    ForbiddenError,
    HubdError,
)
from hubd.client.api import MAX_REQUEST_BYTES
from hubd.hubctl import commands
from hubd.hubctl.config import ENV_API_KEY, ENV_TOKEN, ENV_URL, ConfigError, Settings, load
from hubd.hubctl.errors import UsageError
from hubd.hubctl.output import printable

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
PROG = "hubctl"

EPILOG = f"""\
settings: --url/--token/--api-key, else ${ENV_URL}/${ENV_TOKEN}/${ENV_API_KEY}, else the
file $HUBCTL_CONFIG (default ~/.config/hubd/hubctl.toml) with keys url, token, api_key.
exit codes: 0 ok, 1 server or network error, 2 usage, credential or authorization error.
See docs/client.md."""


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    """The options every command takes, before or after the command name."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url", default=default, help=f"hubd base URL, e.g. http://127.0.0.1:8080 (${ENV_URL})"
    )
    group.add_argument(
        "--token",
        default=default,
        help=f"bearer token (${ENV_TOKEN}; prefer it or the file: flags show in ps)",
    )
    group.add_argument("--api-key", default=default, help=f"API key (${ENV_API_KEY})")
    group.add_argument(
        "--timeout",
        type=float,
        default=default,
        help="seconds for each request or connection attempt (default 10)",
    )
    # Binds connections to a local address: hubd allows one subscriber per client IP.
    group.add_argument("--source-address", default=default, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Subscribe to, publish on and inspect a hubd event hub.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _connection_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description, epilog=EPILOG)
        p.formatter_class = argparse.RawDescriptionHelpFormatter
        # SUPPRESS: an option given before the command name is not reset by this one.
        _connection_options(p, argparse.SUPPRESS)
        return p

    s = command(
        "subscribe",
        "print events as they arrive (reconnects and resumes by itself)",
        "Print the events of CHANNELS as they arrive: one aligned line each on a terminal, "
        "one JSON object per line (the envelope) with --json or when stdout is not a "
        "terminal. Reconnects after a drop and resumes where it stopped; says on stderr "
        "when it reconnects and when events were missed. Ctrl-C closes and exits 0.",
    )
    s.add_argument("channels", nargs="+", metavar="CHANNELS", help="e.g. pdfm,orchestrator")
    s.add_argument("--since", metavar="ID", help="resume after this event id")
    s.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    s.add_argument(
        "--heartbeat", type=float, default=20.0, help="seconds between pings (default 20)"
    )
    s.add_argument(
        "--max-backoff",
        type=float,
        default=30.0,
        help="longest wait between reconnect attempts, in seconds (default 30)",
    )

    p = command(
        "publish",
        "publish one event, or many from stdin",
        "Publish one event and print its id; or with --stdin, read one event JSON object per "
        'line ({"event_type": ..., "message": ..., "body": ...}), send them in batches of '
        "up to 1000 (and --max-request-bytes) and print their ids in order. Ctrl-C or "
        "SIGTERM stops reading, publishes what was read, prints the ids and exits 130 or 143.",
    )
    p.add_argument("channel", nargs="?", metavar="CHANNEL")
    p.add_argument("message", nargs="?", metavar="MESSAGE")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="JSON", help="the body, a JSON value")
    body.add_argument("--body-file", metavar="FILE", help="read the body from FILE ('-': stdin)")
    p.add_argument("--client-id", metavar="ID", help="deliver to this one connection only")
    p.add_argument("--stdin", action="store_true", help="read events from stdin, one per line")
    p.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="N",
        help="with --stdin: largest request body, in bytes; also the longest line "
        f"(default {MAX_REQUEST_BYTES}, below hubd's default hub.max_publish_bytes)",
    )

    u = command(
        "unsubscribe",
        "remove channels from a live connection",
        "Remove CHANNELs from the connection CLIENT_ID (yours, or any with the admin role).",
    )
    u.add_argument("client_id", metavar="CLIENT_ID")
    u.add_argument("channels", nargs="+", metavar="CHANNEL")
    u.add_argument("--json", action="store_true", help="print the server's JSON answer")

    w = command(
        "whoami",
        "show the client id and what the server knows of this credential",
        "Open a connection on the system channel, ask for its client id and show it, with the "
        "principal and client IP when the credential has the admin role.",
    )
    w.add_argument("--json", action="store_true", help="print JSON")

    c = command("clients", "list subscriber connections (admin)", "List every open connection.")
    c.add_argument("--json", action="store_true", help="print the server's JSON answer")
    t = command("stats", "show the hub's counters (admin)", "Show counters and latency.")
    t.add_argument("--json", action="store_true", help="print the server's JSON answer")
    return parser


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
