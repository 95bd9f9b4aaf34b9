"""`hubctl`'s command line: the commands, their arguments and options, and the help text."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TypeAlias

from hubd import __version__
from hubd.client.api import MAX_REQUEST_BYTES
from hubd.hubctl.config import DEFAULT_URL, ENV_API_KEY, ENV_TOKEN, ENV_URL

if TYPE_CHECKING:
    # What `add_subparsers` returns; generic only in the type stubs.
    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

PROG = "hubctl"

EPILOG = f"""\
settings: --url/--token/--api-key, else ${ENV_URL}/${ENV_TOKEN}/${ENV_API_KEY}, else the
file $HUBCTL_CONFIG (default ~/.config/hubd/hubctl.toml) with keys url, token, api_key;
else the URL {DEFAULT_URL} (what `make run` serves). There is no default credential.
exit codes: 0 ok, 1 server or network error, 2 usage, credential or authorization error.
See docs/client.md."""


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    """The options every command takes, before or after the command name."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default,
        help=f"hubd base URL (default {DEFAULT_URL}, what `make run` serves); the first of: "
        f"--url, ${ENV_URL}, url in the config file, the default",
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
    group.add_argument(
        "--source-address",
        metavar="ADDR",
        default=default,
        help="connect from this local IP address, e.g. 127.0.0.2: hubd allows one subscriber "
        "connection per client IP, so a second subscribe (or whoami) from this machine needs "
        "another address (on Linux every 127.x.x.x is this machine)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Subscribe to, publish on and inspect a hubd event hub.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _connection_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_subscribe(sub)
    _add_publish(sub)
    _add_unsubscribe(sub)
    _add_whoami(sub)
    c = _command(
        sub, "clients", "list subscriber connections (admin)", "List every open connection."
    )
    c.add_argument("--json", action="store_true", help="print the server's JSON answer")
    t = _command(sub, "stats", "show the hub's counters (admin)", "Show counters and latency.")
    t.add_argument("--json", action="store_true", help="print the server's JSON answer")
    return parser


def _command(sub: Commands, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A command's subparser, with the connection options."""
    p = sub.add_parser(name, help=help, description=description, epilog=EPILOG)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    # SUPPRESS: an option given before the command name is not reset by this one.
    _connection_options(p, argparse.SUPPRESS)
    return p


def _add_subscribe(sub: Commands) -> None:
    s = _command(
        sub,
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


def _add_publish(sub: Commands) -> None:
    p = _command(
        sub,
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


def _add_unsubscribe(sub: Commands) -> None:
    u = _command(
        sub,
        "unsubscribe",
        "remove channels from a live connection",
        "Remove CHANNELs from the connection CLIENT_ID (yours, or any with the admin role).",
    )
    u.add_argument("client_id", metavar="CLIENT_ID")
    u.add_argument("channels", nargs="+", metavar="CHANNEL")
    u.add_argument("--json", action="store_true", help="print the server's JSON answer")


def _add_whoami(sub: Commands) -> None:
    w = _command(
        sub,
        "whoami",
        "show the client id and what the server knows of this credential",
        "Open a connection on the system channel, ask for its client id and show it, with the "
        "principal and client IP when the credential has the admin role.",
    )
    w.add_argument("--json", action="store_true", help="print JSON")
