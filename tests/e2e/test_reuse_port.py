"""Two `hubd serve` processes on one port (`server.reuse_port = true`, `--instance 1` and
`--instance 2` on the same file, as systemd/hubd@.service runs them), joined through a
real redis-server: the kernel spreads the clients over both, an event published to either
reaches every client, and the one-connection-per-IP rule holds across them.

Which process holds what is read from each process's own view: its stderr (`connected`,
`rejected`) and its own metrics listener (`metrics.listen`'s port plus N-1), since a
request to the shared port reaches whichever process the kernel picks."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from hubd.config_diff import RECORD_NAME, read_record

from ..helpers import ADMIN, HOST, SUB, event, write_config
from ..redis_server import RedisServer
from .helpers import (
    HUBD,
    READY,
    WAIT,
    HubdProcess,
    Subscriber,
    client_ip,
    http_client,
    rejected,
    rejection_error,
    subscribe,
)

pytestmark = pytest.mark.e2e

STARTING = re.compile(r"\bstarting\b.*")
RELOADED = re.compile(r"\breloaded\b.*")
# Enough tries that a process getting none of them is a broken spread, not bad luck: with
# two processes each try misses one of them with probability 1/2 (2**-40 for all 40).
TRIES = 40
# Clients per process before the test goes on (each process holds some and publishes).
EACH = 3

_prefixes = itertools.count(1)


@pytest.fixture
def redis(request: pytest.FixtureRequest) -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server; .ci/run does)")
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@contextmanager
def reserved_ports() -> Iterator[tuple[int, int]]:
    """A port for both processes to share and a metrics port M with M+1 free too, held by
    bound (not listening) sockets until the block ends: hubd binds them beside these
    (SO_REUSEADDR, and SO_REUSEPORT for the shared one), so no one else can meanwhile."""
    held: list[socket.socket] = []

    def bind(port: int, *, reuse_port: bool = False) -> socket.socket:
        sock = socket.socket()
        held.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((HOST, port))
        return sock

    try:
        shared = bind(0, reuse_port=True).getsockname()[1]
        for _ in range(TRIES):
            metrics = bind(0).getsockname()[1]
            if metrics < 65535:
                try:
                    bind(metrics + 1)
                    break
                except OSError:
                    pass
        else:
            raise AssertionError("found no two free consecutive ports for metrics.listen")
        yield shared, metrics
    finally:
        for sock in held:
            sock.close()


@dataclass
class Instance:
    """One of the processes: `hubd serve --instance n`, under a fake systemd that gives it
    a runtime directory of its own and records its sd_notify datagrams."""

    n: int
    process: HubdProcess
    metrics: int  # the port of its own metrics listener
    runtime_dir: Path
    notify: trio.socket.SocketType

    async def status(self) -> str:
        """The STATUS= of its next READY=1 datagram (at start; after a reload)."""
        with trio.fail_after(WAIT):
            while True:
                states = (await self.notify.recv(65536)).decode().split("\n")
                if "READY=1" in states:
                    return next(s for s in states if s.startswith("STATUS="))


async def start_instance(
    nursery: trio.Nursery, config: Path, n: int, metrics: int, directory: Path
) -> Instance:
    runtime_dir = directory / f"hubd-{n}"
    runtime_dir.mkdir()
    notify = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await notify.bind(str(directory / f"notify-{n}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": str(directory / f"notify-{n}"), "RUNTIME_DIRECTORY": str(runtime_dir)}
    try:
        process = await trio.lowlevel.open_process(
            [HUBD, "serve", "--config", str(config), "--instance", str(n)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        return Instance(
            n, await HubdProcess.attach(nursery, process, config), metrics, runtime_dir, notify
        )
    except BaseException:
        notify.close()
        raise


@pytest.fixture
async def instances(
    nursery: trio.Nursery, tmp_path: Path, redis: RedisServer
) -> AsyncIterator[tuple[list[Instance], int]]:
    """Instances 1 and 2 of one config file, and the port they share."""
    with reserved_ports() as (port, metrics):
        config = write_config(
            tmp_path / "hubd.toml",
            server={"listen": [f"{HOST}:{port}"], "reuse_port": True},
            backplane={
                "kind": "redis",
                "url": redis.url,
                "prefix": f"reuseport{next(_prefixes)}",
                "lease_seconds": 3.0,
            },
            metrics={"listen": f"{HOST}:{metrics}"},
        )
        started: list[Instance] = []
        try:
            for n in (1, 2):
                started.append(await start_instance(nursery, config, n, metrics + n - 1, tmp_path))
            yield started, port
        finally:
            for instance in started:
                await instance.process.aclose()
                instance.notify.close()
    for instance in started:
        assert "Traceback" not in instance.process.output


async def scrape(metrics_port: int, name: str, **labels: str) -> float:
    """The sample of `name` with exactly `labels` from a process's own metrics listener
    (0 while it has none)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://{HOST}:{metrics_port}/metrics")
    assert response.status_code == 200, response.text
    for match in re.finditer(rf"(?m)^{name}(?:{{(.*)}})? (\S+)$", response.text):
        if dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) == labels:
            return float(match.group(2))
    return 0.0


async def holder(instances: list[Instance], client: Subscriber) -> int:
    """The index of the instance that logged `client`'s `connected` line (it is logged
    before the confirmation is sent, so it is on its way when this is called)."""
    pattern = re.compile(rf"\bconnected client_id={re.escape(client.client_id)} ip=")
    found: list[int] = []
    async with trio.open_nursery() as nursery:

        async def watch(index: int) -> None:
            await instances[index].process.wait_for_line(pattern)
            found.append(index)
            nursery.cancel_scope.cancel()

        for index in range(len(instances)):
            nursery.start_soon(watch, index)
    assert len(found) == 1, f"{client.client_id} logged as connected by {found}"
    return found[0]


async def publish_fresh(port: int, message: str) -> str:
    """POST one event over a new connection (a new source address and port: the kernel
    picks the process afresh)."""
    async with http_client(f"http://{HOST}:{port}") as http:
        response = await http.post("/v1/events", json=event("pdfm", message), headers=ADMIN)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_each_instance_names_itself_and_binds_its_own_metrics_port(
    instances: tuple[list[Instance], int],
) -> None:
    both, port = instances
    for instance in both:
        n, process = instance.n, instance.process
        starting = (await process.wait_for_line(STARTING)).group(0)
        assert f" instance={n} " in starting, starting
        assert f" listen={HOST}:{port} " in starting and " reuse_port=True " in starting
        assert f" metrics={HOST}:{instance.metrics} " in starting, starting
        assert process.port == port  # its ready line: both serve the one port
        binds = (await process.wait_for_line(READY)).group(1).split(",")
        assert await instance.status() == f"STATUS=instance {n} serving on {' '.join(binds)}"
        record = read_record(str(instance.runtime_dir))
        assert (record.instance, record.pid) == (n, process.process.pid)
        # The file's value: a reload compares the file with the file, never the offset.
        assert record.settings.metrics.listen == f"{HOST}:{both[0].metrics}"
        # A reload writes the record again, still naming the instance, and the file it
        # compares with the running one is the file: nothing changed, nothing pending.
        (instance.runtime_dir / RECORD_NAME).unlink()
        since = len(process.lines)
        process.process.send_signal(signal.SIGHUP)
        reloaded = (await process.wait_for_line(RELOADED, since=since)).group(0)
        assert " changed=- restart_pending=-" in reloaded, reloaded
        assert await instance.status() == "STATUS=serving (configuration reloaded)"
        assert read_record(str(instance.runtime_dir)).instance == n


async def test_two_processes_share_a_port_and_act_as_one_hub(
    instances: tuple[list[Instance], int],
) -> None:
    both, port = instances
    async with AsyncExitStack() as stack:
        # Clients from distinct addresses until each process holds EACH of them.
        clients: list[tuple[Subscriber, int]] = []
        for _ in range(TRIES):
            client = await stack.enter_async_context(subscribe(port, "pdfm"))
            clients.append((client, await holder(both, client)))
            if all(sum(1 for _, at in clients if at == i) >= EACH for i in (0, 1)):
                break
        held = [sum(1 for _, at in clients if at == i) for i in (0, 1)]
        assert min(held) >= EACH, f"the kernel sent the clients to one process only: {held}"
        # Each process's own count says the same as its log.
        for i, instance in enumerate(both):
            assert await scrape(instance.metrics, "hubd_connections_open") == held[i]

        # Publishes over new connections until each process has taken some; every client
        # gets every event, in one order, whichever process took the POST.
        ids: list[str] = []
        for k in range(TRIES):
            ids.append(await publish_fresh(port, f"e{k}"))
            taken = [
                await scrape(
                    i.metrics, "hubd_http_requests_total", route="/v1/events", status="202"
                )
                for i in both
            ]
            if min(taken) >= 2:
                break
        assert min(taken) >= 2, f"the kernel sent the publishes to one process only: {taken}"
        assert sum(taken) == len(ids)
        for client, _ in clients:
            assert [(await client.recv())["id"] for _ in ids] == ids


async def test_the_per_ip_rule_holds_across_the_processes(
    instances: tuple[list[Instance], int],
) -> None:
    both, port = instances
    ip = client_ip()
    async with subscribe(port, "pdfm,health", ip=ip) as first:
        other = both[1 - await holder(both, first)]
        since = len(other.process.lines)
        # Each new attempt from the same address (a new source port) lands on either
        # process; every one is refused, and one that reached the other process is refused
        # there, by the claim in Redis.
        for _ in range(TRIES):
            body = rejection_error(await rejected(port, "pdfm", SUB, ip=ip), 409)
            assert body["error"] == "ip_in_use" and ip in body["message"], body
            if "on another node" in body["message"]:
                break
        else:
            raise AssertionError(f"no attempt reached the process not holding {ip}")
        refusal = re.compile(rf"\brejected ip={re.escape(ip)} status=409 error=ip_in_use ")
        await other.process.wait_for_line(refusal, since=since)
        refused = {"status": "409", "reason": "ip_in_use"}
        assert await scrape(other.metrics, "hubd_connections_rejected_total", **refused) >= 1
        # The first connection is untouched by all this.
        pong = await first.request({"event_type": "health", "message": "ping", "id": "p"})
        assert (pong["message"], pong["ref_id"]) == ("pong", "p")
