"""Command line: `hubd serve`, `hubd check-config`, `hubd hash-secret`, `hubd --version`.
Exit codes: 0 ok, 2 usage or configuration error (a message, never a traceback)."""

from __future__ import annotations

import argparse
import logging
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
    check = sub.add_parser(
        "check-config",
        help="validate a config file; print a summary and the worst-case memory it allows",
        description="Validate a config file and load the TLS files it names. Prints a summary "
        "and the worst-case memory the limits allow; risky trusted_proxies ranges are warned "
        "about on stderr (exit status still 0).",
    )
    check.add_argument("path", help="TOML config file")
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
        from hubd.budget import memory_lines
        from hubd.core.clientip import trusted_proxy_warnings
        from hubd.service import check_history_path, check_tls

        try:
            settings = load_settings(args.path)
            check_tls(settings)  # the files the daemon would load at start
            check_history_path(settings)
        except ConfigError as exc:
            print(f"hubd: {args.path}: {exc}", file=sys.stderr)
            return 2
        print(f"{args.path}: ok: {settings.summary()}")
        for line in memory_lines(settings):
            print(line)
        # Risky but valid: warnings, and the exit status stays 0 (the file does load).
        limits = settings.limits
        for warning in trusted_proxy_warnings(limits.trusted_proxies, limits.client_ip_header):
            print(f"hubd: {args.path}: warning: {warning}", file=sys.stderr)
        return 0
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "hash-secret":
        return _hash_secret(args.stdin)
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
        service.check_history_path(settings)
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
        listeners = service.open_all(settings)
    except (service.ListenError, sdnotify.ActivationError) as exc:
        print(f"hubd: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(partial(service.run, settings, path, listeners, log_handler=handler))
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
