"""hubctl (the real console script, as a subprocess) and the client library against real
hubd daemons: subscribe output, reconnect and resume, what is said when events were
missed, publish and publish --stdin, the admin commands, credentials and exit codes."""

from __future__ import annotations

import ipaddress
import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from hubd.client import (
    AuthError,
    ConflictError,
    Credentials,
    Event,
    ForbiddenError,
    FrameError,
    Gap,
    HubClient,
    HubdError,
    Notice,
    Reconnecting,
    Resumed,
    Unsubscribed,
)

from ..helpers import EXTRA_CHANNEL, HEX64, HOST, assert_uuid4
from ..redis_server import free_port
from .conftest import StartHubd
from .helpers import WAIT, SessionHubd, client_ip

pytestmark = pytest.mark.e2e

HUBCTL = str(Path(sys.executable).with_name("hubctl"))
SUB = Credentials(token="sub-token")
ADMIN = Credentials(token="admin-token")
PUB = Credentials(api_key="pub-key")
CONNECTED = re.compile(r"subscribed to (\S.*) as client (\S+)")


# -- running hubctl ------------------------------------------------------------------------


def hubctl_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment without any hubctl setting, and no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUBD_", "HUBCTL_"))}
    env["HUBCTL_CONFIG"] = str(tmp_path / "no-such-hubctl.toml")
    env.update(extra)
    return env


def as_user(server_url: str, token: str, ip: str | None = None) -> list[str]:
    args = ["--url", server_url, "--token", token]
    return [*args, "--source-address", ip] if ip else args


async def run_hubctl(
    args: list[str], env: Mapping[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(3 * WAIT):
        return await trio.run_process(
            [HUBCTL, *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=dict(env),
        )


def text(result: subprocess.CompletedProcess[bytes]) -> tuple[str, str]:
    return result.stdout.decode(), result.stderr.decode()


class Running:
    """A hubctl subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream, sink: list[str]) -> None:
        pending = b""
        try:
            async for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                sink += [line.decode().rstrip("\r") for line in lines]
                self._notify()
        except (trio.ClosedResourceError, trio.BrokenResourceError, OSError):
            pass  # a pty reports EIO once the child has closed it
        if pending:
            sink.append(pending.decode())
        self._notify()

    async def wait_err(self, pattern: str, within: float = WAIT) -> re.Match[str]:
        """Wait for a stderr line matching `pattern` (searched anywhere in the line)."""
        with trio.move_on_after(within):
            while True:
                for line in self.err:
                    if m := re.search(pattern, line):
                        return m
                if self.process.returncode is not None:
                    break
                await self._changed.wait()
        raise AssertionError(f"no stderr line matches {pattern!r}:\n" + "\n".join(self.err))

    async def wait_out(self, count: int, within: float = WAIT) -> list[str]:
        with trio.fail_after(within):
            while len(self.out) < count:
                await self._changed.wait()
        return self.out[:count]

    async def interrupt(self, within: float = WAIT) -> int:
        """Ctrl-C, then the exit status."""
        self.process.send_signal(signal.SIGINT)
        with trio.fail_after(within):
            code = await self.process.wait()
        # Let the pumps read what was written last.
        with trio.move_on_after(1.0):
            while not self.err or not self.err[-1].startswith("hubctl: closed"):
                await self._changed.wait()
        return code


@pytest.fixture
async def hubctl(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Any]:
    """`await hubctl(args, tty=False)` starts a long-running hubctl; all are killed at the end."""
    started: list[Running] = []

    async def start(args: list[str], *, tty: bool = False) -> Running:
        master = slave = -1
        if tty:
            master, slave = pty.openpty()
        process = await trio.lowlevel.open_process(
            [HUBCTL, *args],
            stdin=subprocess.DEVNULL,
            stdout=slave if tty else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hubctl_env(tmp_path),
        )
        running = Running(process)
        started.append(running)
        assert process.stderr is not None
        nursery.start_soon(running.pump, process.stderr, running.err)
        if tty:
            os.close(slave)
            nursery.start_soon(running.pump, trio.lowlevel.FdStream(master), running.out)
        else:
            assert process.stdout is not None
            nursery.start_soon(running.pump, process.stdout, running.out)
        return running

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            for running in started:
                if running.process.returncode is None:
                    running.process.kill()
                await running.process.wait()


async def publish(url: str, channel: str, message: str, body: Any = None) -> str:
    return await HubClient(url, PUB).publish(channel, message, body)


def envelopes(lines: list[str]) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in parsed)
    return parsed


# -- hubctl subscribe ----------------------------------------------------------------------


async def test_subscribe_prints_json_lines_on_a_pipe_and_closes_with_1000_on_ctrl_c(
    hub_server: SessionHubd, hubctl: Any
) -> None:
    url = hub_server.url
    # No --json: stdout is a pipe, so JSON lines anyway.
    running = await hubctl(
        [*as_user(url, "sub-token", client_ip()), "subscribe", "pdfm,orchestrator"]
    )
    connected = await running.wait_err(CONNECTED.pattern)
    assert connected.group(1) == "pdfm, orchestrator, health, global"
    client_id = connected.group(2)
    first = await publish(url, "pdfm", "VM_STATE_CHANGED", {"vm": "vm-1", "state": "running"})
    second = await publish(url, "orchestrator", "NODE_JOINED")
    await publish(url, EXTRA_CHANNEL, "NOT_SUBSCRIBED")
    third = await publish(url, "pdfm", "VM_STATE_CHANGED", {"vm": "vm-2"})
    lines = await running.wait_out(3)
    events = envelopes(lines)
    assert [e["id"] for e in events] == [first, second, third]
    assert events[0]["event_type"] == "pdfm"
    assert events[0]["body"] == {"vm": "vm-1", "state": "running"}
    assert events[1]["message"] == "NODE_JOINED" and "body" not in events[1]
    # One compact JSON object per line, as the server sent it.
    assert lines[0] == json.dumps(events[0], separators=(",", ":"))

    assert await running.interrupt() == 0
    assert running.err[-1] == "hubctl: closed the connection (1000 normal closure)"
    assert len(running.out) == 3
    # The server saw the client close the connection (it logs client closes as `peer`).
    closed = await hub_server.wait_for_line(re.compile(rf"closed client_id={client_id} "))
    assert 'code=peer reason="client closed"' in closed.string


async def test_subscribe_on_a_terminal_prints_aligned_lines(
    hub_server: SessionHubd, hubctl: Any
) -> None:
    url = hub_server.url
    running = await hubctl(
        [*as_user(url, "sub-token", client_ip()), "subscribe", "pdfm", "orchestrator"], tty=True
    )
    await running.wait_err(CONNECTED.pattern)
    await publish(url, "pdfm", "VM_STATE_CHANGED", {"vm": "vm-1", "state": "running"})
    await publish(url, "orchestrator", "NODE_JOINED", {"node": "n-7"})
    first, second = await running.wait_out(2)
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3}  pdfm +VM_STATE_CHANGED", first), first
    assert first.endswith('{"vm":"vm-1","state":"running"}')
    assert second.index("NODE_JOINED") == first.index("VM_STATE_CHANGED")
    assert second.index('{"node"') == first.index('{"vm"')
    assert await running.interrupt() == 0


async def test_subscribe_keeps_pinging_while_stdout_is_not_read(
    idle_server: SessionHubd, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A reader that stops reading (a paused pager) blocks the writing of events, not
    the heartbeat: the idle server (0.4 s) keeps the connection."""
    url = idle_server.url
    process = await trio.lowlevel.open_process(
        [HUBCTL, *as_user(url, "sub-token", client_ip()), "subscribe", "pdfm", "--heartbeat=0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=hubctl_env(tmp_path),
    )
    assert process.stdout and process.stderr
    running = Running(process)
    nursery.start_soon(running.pump, process.stderr, running.err)
    try:
        client_id = (await running.wait_err(CONNECTED.pattern)).group(2)
        # ~220 kB of events: far more than a pipe holds, so hubctl's write blocks.
        async with HubClient(url, PUB) as publisher:
            ids = await publisher.publish_many(
                {"event_type": "pdfm", "message": "FILL", "body": {"pad": "x" * 2000}}
                for _ in range(100)
            )
        await trio.sleep(2.0)  # five idle timeouts with stdout not read
        # Still open, and not closing: an idle-timed-out connection stays listed, marked
        # closing, until the server has written what it had queued for it.
        mine = [c for c in await HubClient(url, ADMIN).clients() if c.client_id == client_id]
        assert len(mine) == 1 and not mine[0].closing, running.err
        out = b""
        with trio.fail_after(WAIT):
            while out.count(b"\n") < len(ids):
                out += await process.stdout.receive_some(65536)
        assert [json.loads(x)["id"] for x in out.splitlines()] == ids
        assert not [line for line in running.err if "connection lost" in line]
        assert await running.interrupt() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_subscribe_exits_0_when_the_reader_of_stdout_goes_away(
    hub_server: SessionHubd, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """`hubctl subscribe pdfm | head -1`."""
    url = hub_server.url
    process = await trio.lowlevel.open_process(
        [HUBCTL, *as_user(url, "sub-token", client_ip()), "subscribe", "pdfm"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=hubctl_env(tmp_path),
    )
    assert process.stdout and process.stderr
    running = Running(process)
    nursery.start_soon(running.pump, process.stderr, running.err)
    try:
        await running.wait_err(CONNECTED.pattern)
        first = await publish(url, "pdfm", "FIRST")
        with trio.fail_after(WAIT):
            line = await process.stdout.receive_some(65536)
        assert json.loads(line)["id"] == first
        await process.stdout.aclose()  # the reader goes away
        await publish(url, "pdfm", "SECOND")
        with trio.fail_after(WAIT):
            assert await process.wait() == 0, running.err
        assert not [line for line in running.err if "Traceback" in line]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_subscribe_survives_a_server_restart_and_says_events_were_missed(
    start_hubd: StartHubd, hubctl: Any
) -> None:
    port = free_port()
    listen = {"listen": [f"{HOST}:{port}"]}
    first_server = await start_hubd(server=listen)
    url = first_server.url
    running = await hubctl(
        [
            *as_user(url, "sub-token", client_ip()),
            "subscribe",
            "pdfm",
            "--json",
            "--max-backoff",
            "1",
        ]
    )
    await running.wait_err(CONNECTED.pattern)
    before = await publish(url, "pdfm", "BEFORE_RESTART")
    await running.wait_out(1)

    first_server.terminate()
    assert await first_server.wait_exit(WAIT) == 0
    await running.wait_err(r"connection lost \(1001 server shutting down\); reconnecting in")
    second_server = await start_hubd(server=listen)
    assert second_server.url == url
    await running.wait_err(rf"reconnected as client \S+, resuming after event {before}")
    # The new process has no history: the client cannot know what it missed, and says so.
    missed = await running.wait_err("events may have been missed")
    assert f"after event {before}" in missed.string
    after = await publish(url, "pdfm", "AFTER_RESTART")
    events = envelopes(await running.wait_out(2))
    assert [e["id"] for e in events] == [before, after]  # each once
    assert await running.interrupt() == 0
    assert len(running.out) == 2


async def test_subscribe_explains_bad_credentials_and_exits_2(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    result = await run_hubctl(
        [*as_user(hub_server.url, "wrong-secret-123", client_ip()), "subscribe", "pdfm"],
        hubctl_env(tmp_path),
    )
    out, err = text(result)
    assert result.returncode == 2, err
    assert "did not accept the credential from --token" in err
    assert "the bearer token presented is not valid" in err  # the server's words
    assert "wrong-secret-123" not in out + err
    assert "Traceback" not in err


async def test_subscribe_forbidden_channel_exits_2(hub_server: SessionHubd, tmp_path: Path) -> None:
    args = [*as_user(hub_server.url, "sub-pdfm-token", client_ip()), "subscribe", "orchestrator"]
    result = await run_hubctl(args, hubctl_env(tmp_path))
    _, err = text(result)
    assert result.returncode == 2, err
    assert "is valid but not allowed to do this (403 forbidden)" in err
    assert "may not subscribe to 'orchestrator'" in err


async def test_subscribe_while_this_address_is_connected_exits_2(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    ip = client_ip()
    after = str(ipaddress.IPv4Address(ip) + 1)
    async with HubClient(hub_server.url, SUB, source_address=ip).subscribe("pdfm"):
        for command in (["subscribe", "pdfm"], ["whoami"]):
            result = await run_hubctl(
                [*as_user(hub_server.url, "sub-token", ip), *command], hubctl_env(tmp_path)
            )
            _, err = text(result)
            assert result.returncode == 2, err
            # The server's words, then what it means and what to do.
            assert f"(409 ip_in_use): client IP {ip} already has an open connection" in err
            assert "Close the other one (another hubctl subscribe?)" in err
            assert f"connect from another address with --source-address {after}" in err
            assert "limits.one_connection_per_ip" in err
        # The address it suggests gets in.
        result = await run_hubctl(
            [*as_user(hub_server.url, "sub-token", after), "whoami"], hubctl_env(tmp_path)
        )
        assert result.returncode == 0, text(result)[1]


async def test_unreachable_server_exits_1(tmp_path: Path) -> None:
    url = f"http://{HOST}:{free_port()}"
    for command in (["stats"], ["subscribe", "pdfm"]):
        result = await run_hubctl([*as_user(url, "admin-token"), *command], hubctl_env(tmp_path))
        _, err = text(result)
        assert result.returncode == 1, err
        assert err.startswith("hubctl: cannot ") and "Traceback" not in err


# -- hubctl publish ------------------------------------------------------------------------


async def test_publish_prints_the_id_subscribers_see(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    url = hub_server.url
    body_file = tmp_path / "body.json"
    body_file.write_text('{"vm": "vm-9", "state": "stopped"}', encoding="utf-8")
    async with HubClient(url, SUB, source_address=client_ip()).subscribe("pdfm") as events:
        result = await run_hubctl(
            ["--url", url, "publish", "pdfm", "VM_STATE_CHANGED", "--body-file", str(body_file)],
            hubctl_env(tmp_path, HUBD_API_KEY="pub-key"),
        )
        out, err = text(result)
        assert result.returncode == 0, err
        event_id = out.strip()
        assert HEX64.match(event_id), out
        with trio.fail_after(WAIT):
            received = await anext(aiter(events))
    assert received.id == event_id
    assert received.body == {"vm": "vm-9", "state": "stopped"}

    inline = await run_hubctl(
        ["--url", url, "--api-key", "pub-key", "publish", "pdfm", "X", "--body", "[1, 2]"],
        hubctl_env(tmp_path),
    )
    assert inline.returncode == 0 and HEX64.match(text(inline)[0].strip())


async def test_publish_stdin_sends_batches_and_prints_every_id_in_order(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    url = hub_server.url
    count = 1205  # more than one request's worth (1000)
    lines = [
        json.dumps({"event_type": "pdfm", "message": "BULK", "body": {"n": n}})
        for n in range(count)
    ]
    stdin = ("\n".join(lines[:600]) + "\n\n" + "\n".join(lines[600:]) + "\n").encode()
    received: list[Event] = []
    async with HubClient(url, SUB, source_address=client_ip()).subscribe("pdfm") as events:
        result = await run_hubctl(
            ["--url", url, "--api-key", "pub-key", "publish", "--stdin"],
            hubctl_env(tmp_path),
            stdin=stdin,
        )
        out, err = text(result)
        assert result.returncode == 0, err
        with trio.fail_after(WAIT):
            async for event in events:
                if event.message == "BULK":
                    received.append(event)
                if len(received) == count:
                    break
    ids = out.split()
    assert len(ids) == count and all(HEX64.match(i) for i in ids)
    assert [e.id for e in received] == ids
    assert [e.body["n"] for e in received] == list(range(count))


async def test_publish_stdin_names_the_bad_line(hub_server: SessionHubd, tmp_path: Path) -> None:
    args = ["--url", hub_server.url, "--api-key", "pub-key", "publish", "--stdin"]
    env = hubctl_env(tmp_path)
    good = json.dumps({"event_type": "pdfm", "message": "OK"})
    not_json = await run_hubctl(args, env, stdin=f"{good}\n\n{good}\nnot json\n{good}\n".encode())
    out, err = text(not_json)
    assert not_json.returncode == 2, err
    # The good lines before the bad one are published (their ids printed); none after.
    assert len(out.split()) == 2 and all(HEX64.match(i) for i in out.split())
    assert "stdin line 4 is not valid JSON" in err
    assert "2 event(s) from the lines before were published, nothing from line 4 on" in err

    refused_line = json.dumps({"event_type": "health", "message": "NO"})
    refused = await run_hubctl(args, env, stdin=f"{good}\n{good}\n{refused_line}\n".encode())
    out, err = text(refused)
    assert refused.returncode == 1, err
    assert out == ""  # all or nothing: nothing of that batch was published
    assert "lines 1-3 not published" in err
    assert "the refused event is on line 3" in err
    assert "server_owned_channel" in err


async def test_publish_stdin_keeps_requests_under_the_servers_limit(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    """600 events of ~1 kB: one request by count and by the default budget (1 MiB), but
    over this server's hub.max_publish_bytes (256 KiB): refused whole (413, nothing
    published), then sent again in halves until each fits."""
    url = hub_server.url
    args = ["--url", url, "--api-key", "pub-key", "publish", "--stdin"]
    lines = [
        json.dumps({"event_type": "pdfm", "message": "WIDE", "body": {"n": n, "pad": "x" * 1000}})
        for n in range(600)
    ]
    received: list[Event] = []
    async with HubClient(url, SUB, source_address=client_ip()).subscribe("pdfm") as events:
        result = await run_hubctl(args, hubctl_env(tmp_path), stdin="\n".join(lines).encode())
        out, err = text(result)
        assert result.returncode == 0, err
        with trio.fail_after(WAIT):
            async for event in events:
                if event.message == "WIDE":
                    received.append(event)
                if len(received) == len(lines):
                    break
    assert [e.id for e in received] == out.split()
    assert [e.body["n"] for e in received] == list(range(600))

    # --max-request-bytes is the budget, and the longest line read.
    short = json.dumps({"event_type": "pdfm", "message": "SHORT"})
    long = json.dumps({"event_type": "pdfm", "message": "LONG", "body": "y" * 3000})
    capped = await run_hubctl(
        [*args, "--max-request-bytes", "2000"],
        hubctl_env(tmp_path),
        stdin=f"{short}\n{long}\n{short}\n".encode(),
    )
    out, err = text(capped)
    assert capped.returncode == 2, err
    assert len(out.split()) == 1
    assert "stdin line 2 is longer than 2000 bytes" in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_publish_stdin_stops_on_a_signal_after_publishing_what_it_read(
    hub_server: SessionHubd, tmp_path: Path, signum: int, code: int
) -> None:
    line = json.dumps({"event_type": "pdfm", "message": "UNTIL_SIGNAL"})
    process = await trio.lowlevel.open_process(
        [HUBCTL, "--url", hub_server.url, "--api-key", "pub-key", "publish", "--stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=hubctl_env(tmp_path),
    )
    assert process.stdin and process.stdout and process.stderr
    out = err = b""
    try:
        await process.stdin.send_all(f"{line}\n{line}\n".encode())
        with trio.fail_after(WAIT):
            while out.count(b"\n") < 2:
                out += await process.stdout.receive_some(65536)
        # stdin stays open: hubctl is waiting for more lines when the signal comes.
        process.send_signal(signum)
        with trio.fail_after(WAIT):
            returncode = await process.wait()
            while chunk := await process.stdout.receive_some(65536):
                out += chunk
            while chunk := await process.stderr.receive_some(65536):
                err += chunk
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stdin.aclose()
    name = signal.Signals(signum).name
    assert returncode == code, err
    assert len(out.split()) == 2 and all(HEX64.match(i.decode()) for i in out.split())
    assert f"stopped by {name}: every line up to line 2 was published (2 event(s))" in err.decode()


async def test_publish_refusals_exit_with_the_right_code(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    env = hubctl_env(tmp_path)
    url = hub_server.url
    bad_key = await run_hubctl(["--url", url, "--api-key", "nope-key", "publish", "pdfm", "X"], env)
    assert bad_key.returncode == 2
    assert "nope-key" not in text(bad_key)[1]
    not_publisher = await run_hubctl([*as_user(url, "sub-token"), "publish", "pdfm", "X"], env)
    assert not_publisher.returncode == 2
    assert "lacks the 'publisher' role" in text(not_publisher)[1]
    unknown = await run_hubctl(["--url", url, "--api-key", "pub-key", "publish", "nope", "X"], env)
    assert unknown.returncode == 1
    assert "400 unknown_channel" in text(unknown)[1]
    bad_body = await run_hubctl(
        ["--url", url, "--api-key", "pub-key", "publish", "pdfm", "X", "--body", "{nope"], env
    )
    assert bad_body.returncode == 2
    assert "--body is not valid JSON" in text(bad_body)[1]


# -- admin commands, whoami, config file ---------------------------------------------------


async def test_admin_commands(hub_server: SessionHubd, tmp_path: Path) -> None:
    url = hub_server.url
    env = hubctl_env(tmp_path, HUBD_URL=url, HUBD_TOKEN="admin-token")
    notices: list[Notice] = []
    ip = client_ip()
    client = HubClient(url, SUB, source_address=ip)
    async with client.subscribe("pdfm,orchestrator", on_notice=notices.append) as events:
        client_id = events.client_id
        assert client_id is not None

        table = await run_hubctl(["clients"], env)
        out, err = text(table)
        assert table.returncode == 0, err
        header, *rows = out.splitlines()
        assert header.split()[:3] == ["CLIENT", "ID", "PRINCIPAL"]
        mine = [row for row in rows if row.startswith(client_id)]
        assert len(mine) == 1 and mine[0].split()[1:3] == ["sub", ip]
        assert "pdfm,orchestrator,health,global" in mine[0]
        raw = await run_hubctl(["clients", "--json"], env)
        listed = json.loads(text(raw)[0])
        assert client_id in [c["client_id"] for c in listed["clients"]]

        stats = await run_hubctl(["stats"], env)
        out, _ = text(stats)
        assert stats.returncode == 0
        assert re.search(r"^connections +\d+$", out, re.M)
        assert re.search(r"^pdfm +\d+ +\d+ +\d+$", out, re.M)
        figures = json.loads(text(await run_hubctl(["stats", "--json"], env))[0])
        assert figures["channels"]["pdfm"]["subscribers"] >= 1

        unsubscribed = await run_hubctl(["unsubscribe", client_id, "orchestrator", "global"], env)
        out, err = text(unsubscribed)
        assert unsubscribed.returncode == 0, err
        assert re.search(r"^unsubscribed +orchestrator$", out, re.M)
        assert re.search(r"^ignored +global$", out, re.M)
        assert re.search(r"^subscriptions +pdfm, health, global$", out, re.M)
        # The subscription is told, in order with the events.
        marker = await publish(url, "pdfm", "AFTER_UNSUBSCRIBE")
        with trio.fail_after(WAIT):
            event = await anext(aiter(events))
        assert event.id == marker
        assert Unsubscribed(("orchestrator",), ("pdfm", "health", "global")) in notices
        assert events.subscriptions == ("pdfm", "health", "global")

    who = await run_hubctl(["whoami", "--source-address", client_ip()], env)
    out, err = text(who)
    assert who.returncode == 0, err
    assert re.search(r"^principal +admin$", out, re.M)
    assert re.search(r"^credential +from HUBD_TOKEN$", out, re.M)
    assert_uuid4(re.search(r"^client id +(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]

    as_subscriber = await run_hubctl(
        ["whoami", "--json", "--token", "sub2-token", "--source-address", client_ip()], env
    )
    details = json.loads(text(as_subscriber)[0])
    assert_uuid4(details["client_id"])
    assert details["principal"] is None  # only an admin may see it
    assert details["subscriptions"] == ["system", "global"]

    forbidden = await run_hubctl(["clients", "--token", "sub-token"], env)
    assert forbidden.returncode == 2
    assert "lacks the 'admin' role" in text(forbidden)[1]


async def test_config_file_and_precedence(hub_server: SessionHubd, tmp_path: Path) -> None:
    config = tmp_path / "hubctl.toml"
    config.write_text(f'url = "{hub_server.url}"\ntoken = "admin-token"\n', encoding="utf-8")
    config.chmod(0o600)
    env = hubctl_env(tmp_path, HUBCTL_CONFIG=str(config))
    from_file = await run_hubctl(["stats", "--json"], env)
    assert from_file.returncode == 0, text(from_file)[1]
    # The environment wins over the file, and the flag over the environment.
    env_wins = await run_hubctl(["stats"], {**env, "HUBD_TOKEN": "sub-token"})
    assert env_wins.returncode == 2
    assert "credential from HUBD_TOKEN" in text(env_wins)[1]
    flag_wins = await run_hubctl(
        ["stats", "--token", "admin-token"], {**env, "HUBD_TOKEN": "sub-token"}
    )
    assert flag_wins.returncode == 0


# -- the library, against a real server ----------------------------------------------------


async def test_library_resumes_after_a_drop_without_loss_or_duplicates(
    idle_server: SessionHubd,
) -> None:
    """The idle server closes a connection that sends nothing for 0.4 s (4408); with pings
    off, the subscription is dropped while the consumer is busy, events are published
    meanwhile, and the resume delivers each exactly once."""
    url = idle_server.url
    admin = HubClient(url, ADMIN)
    notices: list[Notice] = []
    got: list[Event] = []
    client = HubClient(url, SUB, source_address=client_ip())
    async with client.subscribe(
        "pdfm", heartbeat=None, backoff=(0.05, 0.2), on_notice=notices.append
    ) as events:
        first_id = events.client_id
        seen = await publish(url, "pdfm", "SEEN")
        with trio.fail_after(WAIT):
            got.append(await anext(aiter(events)))
        # The consumer is busy; the server drops the connection meanwhile.
        with trio.fail_after(WAIT):
            while True:
                if first_id not in [c.client_id for c in await admin.clients()]:
                    break
                await trio.sleep(0.05)
        missed = [await publish(url, "pdfm", f"MISSED-{n}") for n in range(5)]
        with trio.fail_after(WAIT):
            async for event in events:
                got.append(event)
                if len(got) == 6:
                    break
        live = await publish(url, "pdfm", "LIVE")
        with trio.fail_after(WAIT):
            async for event in events:
                got.append(event)
                break
    assert [e.id for e in got] == [seen, *missed, live]
    assert [e.replayed for e in got[1:6]] == [True] * 5
    assert not [n for n in notices if isinstance(n, Gap)]
    assert any(isinstance(n, Reconnecting) and n.cause == "4408 idle timeout" for n in notices)
    assert Resumed(seen, 5) in notices
    assert events.reconnects >= 1 and events.gaps == 0


async def test_library_heartbeat_keeps_the_connection_open(idle_server: SessionHubd) -> None:
    url = idle_server.url
    client = HubClient(url, SUB, source_address=client_ip())
    async with client.subscribe("pdfm", heartbeat=0.1) as events:
        client_id = events.client_id
        await trio.sleep(1.5)  # well past the 0.4 s idle timeout
        marker = await publish(url, "pdfm", "STILL_HERE")
        with trio.fail_after(WAIT):
            event = await anext(aiter(events))
        assert event.id == marker
        assert events.reconnects == 0 and events.client_id == client_id


async def test_library_keeps_pinging_quietly_after_health_is_unsubscribed(
    idle_server: SessionHubd,
) -> None:
    url = idle_server.url
    notices: list[Notice] = []
    client = HubClient(url, SUB, source_address=client_ip())
    async with client.subscribe("pdfm", heartbeat=0.1, on_notice=notices.append) as events:
        assert events.client_id is not None
        await HubClient(url, ADMIN).unsubscribe(events.client_id, ["health"])
        await trio.sleep(1.5)  # pings now get error replies; they still count as activity
        marker = await publish(url, "pdfm", "STILL_HERE")
        with trio.fail_after(WAIT):
            event = await anext(aiter(events))
        assert event.id == marker
        assert events.reconnects == 0
    assert Unsubscribed(("health",), ("pdfm", "global")) in notices
    assert not [n for n in notices if isinstance(n, FrameError)]


async def test_library_errors_carry_the_server_answer(hub_server: SessionHubd) -> None:
    url = hub_server.url
    with pytest.raises(AuthError) as auth:
        async with HubClient(url, Credentials(token="nope"), source_address=client_ip()).subscribe(
            "pdfm"
        ):
            pass
    assert (auth.value.status, auth.value.code) == (401, "unauthorized")
    assert auth.value.message == "the bearer token presented is not valid"

    limited = HubClient(url, Credentials(token="sub-pdfm-token"), source_address=client_ip())
    with pytest.raises(ForbiddenError) as forbidden:
        async with limited.subscribe("orchestrator"):
            pass
    assert forbidden.value.code == "forbidden"

    ip = client_ip()
    async with HubClient(url, SUB, source_address=ip).subscribe("pdfm"):
        with pytest.raises(ConflictError) as conflict:
            async with HubClient(url, SUB, source_address=ip).subscribe("pdfm"):
                pass
    assert conflict.value.code == "ip_in_use" and ip in conflict.value.message

    with pytest.raises(HubdError) as refused:
        await HubClient(url, PUB).publish("health", "X")
    assert (refused.value.status, refused.value.code) == (400, "server_owned_channel")
    with pytest.raises(AuthError):
        await HubClient(url, Credentials(api_key="nope")).publish("pdfm", "X")


async def test_library_publish_many_splits_what_the_server_finds_too_large(
    hub_server: SessionHubd,
) -> None:
    url = hub_server.url
    wide = [
        {"event_type": "pdfm", "message": "WIDE_LIB", "body": {"n": n, "pad": "x" * 1000}}
        for n in range(600)
    ]
    received: list[Event] = []
    async with HubClient(url, SUB, source_address=client_ip()).subscribe("pdfm") as events:
        async with HubClient(url, PUB) as publisher:
            ids = await publisher.publish_many(wide)
        with trio.fail_after(WAIT):
            async for event in events:
                if event.message == "WIDE_LIB":
                    received.append(event)
                if len(received) == len(wide):
                    break
    assert [e.id for e in received] == ids
    assert [e.body["n"] for e in received] == list(range(600))

    # A single event over the server's limit is not published; those before it are.
    small = {"event_type": "pdfm", "message": "SMALL"}
    huge = {"event_type": "pdfm", "message": "HUGE", "body": "z" * 300_000}
    with pytest.raises(HubdError) as info:
        await HubClient(url, PUB).publish_many([small, small, huge, small])
    assert info.value.status == 413 and info.value.code == "payload_too_large"
    assert len(info.value.published_ids) == 2
    assert all(HEX64.match(i) for i in info.value.published_ids)


async def test_library_publish_many_and_whoami(hub_server: SessionHubd) -> None:
    url = hub_server.url
    async with HubClient(url, PUB) as publisher:
        ids = await publisher.publish_many(
            {"event_type": "pdfm", "message": "MANY", "body": {"n": n}} for n in range(2001)
        )
    assert len(ids) == len(set(ids)) == 2001
    who = await HubClient(url, ADMIN, source_address=client_ip()).whoami()
    assert who.principal == "admin" and who.subscriptions == ("system", "global")
    assert who.ip is not None and who.ip.startswith("127.10.")


def docs_subscribe_example() -> str:
    """The program under "Subscribe, with resume" in docs/client.md."""
    docs = (Path(__file__).parents[2] / "docs" / "client.md").read_text(encoding="utf-8")
    section = docs.split("### Subscribe, with resume", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_docs_subscribe_example_stops_quietly_on_ctrl_c(
    hub_server: SessionHubd, tmp_path: Path
) -> None:
    program = docs_subscribe_example()
    dev = 'HubClient("http://127.0.0.1:8080", Credentials(token="dev-subscriber-token"))'
    assert dev in program
    ours = f"HubClient({hub_server.url!r}, Credentials(token='sub-token'), "
    script = tmp_path / "subscriber.py"
    script.write_text(
        program.replace(dev, f"{ours}source_address={client_ip()!r})"), encoding="utf-8"
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-u", str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    running = Running(process)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(running.pump, process.stdout, running.out)
            nursery.start_soon(running.pump, process.stderr, running.err)
            assert (await running.wait_out(1))[0].startswith("connected as ")
            event_id = await publish(hub_server.url, "pdfm", "DOCS_EXAMPLE", {"vm": "vm-1"})
            assert "pdfm DOCS_EXAMPLE" in (await running.wait_out(2))[1]
            # The example prints an event, then records it as its resume point: Ctrl-C
            # once that is done, as a user who saw the event recorded would.
            state = tmp_path / "last-event-id"
            with trio.fail_after(WAIT):
                # A file has no event to wait on: poll it.
                while True:
                    if state.exists() and state.read_text() == event_id:
                        break
                    await trio.sleep(0.01)
            process.send_signal(signal.SIGINT)
            with trio.fail_after(WAIT):
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0, "\n".join(running.err)
    assert running.err == []  # no KeyboardInterrupt traceback
    assert (tmp_path / "last-event-id").read_text() == event_id
