"""hubctl's commands. Each takes the parsed arguments and the resolved settings, prints
its result on stdout (errors are left to hubctl.main), and returns the exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio

from hubd.client import HubClient, Notice, Subscription
from hubd.client.api import MAX_REQUEST_BYTES
from hubd.client.connection import unwrap
from hubd.hubctl import output
from hubd.hubctl.config import Settings
from hubd.hubctl.errors import UsageError
from hubd.hubctl.stdin import READ_SIZE, StdinPublisher

DEFAULT_TIMEOUT = 10.0


def say(message: str) -> None:
    print(f"hubctl: {output.printable(message)}", file=sys.stderr, flush=True)


def make_client(args: argparse.Namespace, settings: Settings) -> HubClient:
    return HubClient(
        settings.url,
        settings.credentials,
        source_address=getattr(args, "source_address", None),
        timeout=getattr(args, "timeout", None) or DEFAULT_TIMEOUT,
    )


def _print(line: str) -> None:
    # Flushed per line: a pipe (jq, a test) must see each event when it arrives.
    print(line, flush=True)


def _print_json(value: Any) -> None:
    _print(output.compact(value))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def write_lines(lines: Sequence[str]) -> None:
    """Write `lines` to stdout from a thread, on the file descriptor (no Python buffer,
    so no lock left held if the write is abandoned): a reader that stops reading blocks
    this write only, not the trio thread (heartbeats, signals go on)."""
    if not lines:
        return
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    data = "".join(f"{line}\n" for line in lines).encode(encoding, "backslashreplace")
    await trio.to_thread.run_sync(_write_all, 1, data, abandon_on_cancel=True)


# -- subscribe -----------------------------------------------------------------------------


async def _stop_on_signals(scope: trio.CancelScope) -> None:
    """Ctrl-C (SIGINT) or SIGTERM: cancel `scope`, so the subscription closes with 1000."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def subscribe(args: argparse.Namespace, settings: Settings) -> int:
    channels = ",".join(args.channels)
    as_json = args.json or not sys.stdout.isatty()
    if args.heartbeat <= 0 or args.max_backoff <= 0:
        raise UsageError("--heartbeat and --max-backoff must be positive")
    if args.since is not None and not _EVENT_ID.match(args.since):
        raise UsageError(f"--since {args.since!r} is not an event id (64 hex digits)")
    backoff = (min(0.5, args.max_backoff), args.max_backoff)
    client = make_client(args, settings)

    def on_notice(notice: Notice) -> None:
        say(output.notice_line(notice))

    sub: Subscription | None = None
    try:
        with trio.CancelScope() as stop:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signals, stop)
                async with client.subscribe(
                    channels,
                    since=args.since,
                    heartbeat=args.heartbeat,
                    backoff=backoff,
                    on_notice=on_notice,
                ) as sub:
                    lines = output.EventLines(sub.subscriptions)
                    async for event in sub:
                        await write_lines(
                            [output.json_line(event) if as_json else lines.line(event)]
                        )
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if inner is group:
            raise
        if isinstance(inner, BrokenPipeError):
            return _stdout_gone()
        raise inner from None
    except BrokenPipeError:
        return _stdout_gone()
    if sub is not None and sub.closed_cleanly:
        say("closed the connection (1000 normal closure)")
    return 0


def _stdout_gone() -> int:
    """The reader of stdout went away (`| head`): a normal way to stop."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
    return 0


# -- publish -------------------------------------------------------------------------------


def _body(args: argparse.Namespace) -> Any:
    if args.body is not None:
        text, where = args.body, "--body"
    elif args.body_file is not None:
        where = "--body-file"
        try:
            if args.body_file == "-":
                text = sys.stdin.read()
            else:
                text = Path(args.body_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {args.body_file}: {exc}") from None
    else:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None


async def publish(args: argparse.Namespace, settings: Settings) -> int:
    async with make_client(args, settings) as client:
        if args.stdin:
            max_bytes = getattr(args, "max_request_bytes", None) or MAX_REQUEST_BYTES
            return await _publish_stdin(client, max_bytes)
        body = _body(args)
        _print(await client.publish(args.channel, args.message, body, args.client_id))
    return 0


_EVENT_ID = re.compile(r"^[0-9a-f]{64}$")


async def _publish_stdin(client: HubClient, max_bytes: int) -> int:
    """One event object per line of stdin (see hubd.hubctl.stdin)."""
    if sys.stdin is None:
        raise UsageError("stdin is closed")
    fd = sys.stdin.fileno()

    async def publish(events: list[dict[str, Any]]) -> list[str]:
        return await client.publish_many(events, max_request_bytes=max_bytes)

    async def read() -> bytes:
        # The file descriptor, from a thread: no Python buffer whose lock an abandoned
        # read would still hold at exit; files, pipes and terminals all work.
        return await trio.to_thread.run_sync(os.read, fd, READ_SIZE, abandon_on_cancel=True)

    publisher = StdinPublisher(publish, write_lines, say, max_bytes=max_bytes)

    async def forward_signals(signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            publisher.interrupt(signum)

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward_signals, signals)
                code = await publisher.run(read)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if inner is group:
            raise
        raise inner from None
    return code


# -- admin and the rest --------------------------------------------------------------------


async def unsubscribe(args: argparse.Namespace, settings: Settings) -> int:
    async with make_client(args, settings) as client:
        if args.json:
            body = {"client_id": args.client_id, "event_types": args.channels}
            _print_json(await client.request("POST", "/v1/ws/unsubscribe", body))
        else:
            result = await client.unsubscribe(args.client_id, args.channels)
            for line in output.unsubscribe_lines(result):
                _print(line)
    return 0


async def whoami(args: argparse.Namespace, settings: Settings) -> int:
    async with make_client(args, settings) as client:
        who = await client.whoami()
    if args.json:
        _print_json(dataclasses.asdict(who))
    else:
        for line in output.whoami_lines(who, settings.credential_source):
            _print(line)
    return 0


async def clients(args: argparse.Namespace, settings: Settings) -> int:
    async with make_client(args, settings) as client:
        if args.json:
            _print_json(await client.request("GET", "/v1/ws/clients"))
            return 0
        found = await client.clients()
    for line in output.clients_table(found):
        _print(line)
    return 0


async def stats(args: argparse.Namespace, settings: Settings) -> int:
    async with make_client(args, settings) as client:
        if args.json:
            _print_json(await client.request("GET", "/v1/ws/stats"))
            return 0
        figures = await client.stats()
    for line in output.stats_lines(figures):
        _print(line)
    return 0
