"""hubctl's commands. Each takes the parsed arguments and the resolved settings, prints
its result on stdout (errors are left to hubctl.main), and returns the exit code."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, cast

import trio

from hubd.client import ClientError, HubClient, Notice, Subscription
from hubd.client.connection import unwrap
from hubd.hubctl import output
from hubd.hubctl.config import Settings

DEFAULT_TIMEOUT = 10.0
# publish --stdin: a batch waits this long for more lines before it is sent, so events
# typed or piped slowly go out at once, while a fast stream fills batches of 1000.
LINGER = 0.05
MAX_BATCH = 1000


class UsageError(Exception):
    """Bad input from the user (not from the server): exit 2 with this message."""


def say(message: str) -> None:
    print(f"hubctl: {message}", file=sys.stderr, flush=True)


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
                        _print(output.json_line(event) if as_json else lines.line(event))
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
            return await _publish_stdin(client)
        body = _body(args)
        _print(await client.publish(args.channel, args.message, body, args.client_id))
    return 0


async def _read_lines(send: trio.MemorySendChannel[tuple[int, str]]) -> None:
    """Lines of stdin as they come (a thread reads, so files, pipes and terminals all
    work), numbered from 1."""
    # read1: whatever one read returns, so lines are sent as they arrive.
    stdin = cast(io.BufferedReader, sys.stdin.buffer)
    pending = b""
    number = 0
    async with send:
        while True:
            chunk = await trio.to_thread.run_sync(stdin.read1, 65536, abandon_on_cancel=True)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                number += 1
                await send.send((number, _decode(raw, number)))
        if pending:
            await send.send((number + 1, _decode(pending, number + 1)))


def _decode(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"stdin line {number} is not UTF-8") from None


def _event(line: str, number: int) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"stdin line {number} is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise UsageError(
            f'stdin line {number} must be a JSON object {{"event_type": ..., "message": ...}}'
        )
    return event


_EVENT_ID = re.compile(r"^[0-9a-f]{64}$")
_INDEX = re.compile(r"(?:event \[|\$\[)(\d+)\]")


async def _publish_stdin(client: HubClient) -> int:
    """One event object per line; batches of up to MAX_BATCH, each sent once it is full
    or no line came for LINGER seconds. Ids are printed as each batch is accepted."""
    published = 0
    batch: list[dict[str, Any]] = []
    numbers: list[int] = []

    async def flush() -> None:
        nonlocal published
        if not batch:
            return
        try:
            ids = await client.publish_many(batch)
        except ClientError as exc:
            first, last = numbers[0], numbers[-1]
            where = f"line {first}" if first == last else f"lines {first}-{last}"
            if (m := _INDEX.search(str(exc))) and int(m.group(1)) < len(numbers):
                where += f" (the refused event is on line {numbers[int(m.group(1))]})"
            say(f"{where} not published (a batch is all or nothing); {published} were before")
            raise
        for event_id in ids:
            _print(event_id)
        published += len(ids)
        batch.clear()
        numbers.clear()

    send, receive = trio.open_memory_channel[tuple[int, str]](MAX_BATCH)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_lines, send)
            async with receive:
                while True:
                    with trio.move_on_after(LINGER if batch else float("inf")):
                        try:
                            number, line = await receive.receive()
                        except trio.EndOfChannel:
                            break
                        if line.strip():
                            batch.append(_event(line, number))
                            numbers.append(number)
                        if len(batch) < MAX_BATCH:
                            continue
                    await flush()
                await flush()
    except BaseExceptionGroup as group:
        inner = unwrap(group)
        if inner is group:
            raise
        raise inner from None
    return 0


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
