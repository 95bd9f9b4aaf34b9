"""Observability of a real `hubd serve`: log lines (text, JSON, under the journal, never a
secret), Prometheus `/metrics` (counts after real traffic, the separate metrics listener),
and smoke tests of `/v1/health`, `/v1/ready` and the admin `GET /v1/ws/clients` view over
real sockets. Who may see what, and readiness while starting or draining, are in
tests/web/test_admin_and_probes.py (a real drain: tests/e2e/test_shutdown.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from hubd import __version__

from ..helpers import (
    ADMIN,
    API_KEYS,
    HOST,
    PROMETHEUS,
    PUB,
    PUB_PDFM,
    PUB_TOKEN,
    PUBSUB,
    SUB,
    SUB2,
    SUB_KEY,
    SUB_PDFM,
    TIMESTAMP,
    TOKENS,
    assert_json_error,
    bearer,
    event,
    find_client,
    write_config,
)
from ..redis_server import free_port
from .conftest import StartHubd
from .helpers import (
    HUBD,
    HubdProcess,
    SessionHubd,
    Subscriber,
    client_ip,
    http_client,
    rejected,
    rejection_error,
    subscribe,
)

pytestmark = pytest.mark.e2e

MAX_MESSAGE_BYTES = 1024
TOO_BIG = "x" * 2000
PING = {"event_type": "health", "message": "ping"}
# "2026-11-28T16:56:42.123Z INFO    hubd: ..."
TEXT_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z [A-Z]+ +hubd[\w.]*: ")
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def closed_line(ip: str) -> re.Pattern[str]:
    """The `closed` event of the connection from `ip`, in text or JSON."""
    ip = re.escape(ip)
    return re.compile(rf'\bclosed client_id=\S+ ip={ip}\b|"event":"closed".*"ip":"{ip}"')


async def ping(client: Subscriber) -> None:
    """A round trip: everything the server did for this client before it is done."""
    await client.send({**PING, "id": "sync"})
    reply, _ = await client.until(lambda e: e.get("ref_id") == "sync")
    assert reply["message"] == "pong", reply


# -- logs: JSON and text -------------------------------------------------------------------


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object."""
    parsed = []
    for line in output.splitlines():
        value = json.loads(line)
        assert isinstance(value, dict), line
        for key in ("ts", "level", "logger", "msg"):
            assert key in value, line
        parsed.append(value)
    return parsed


def events_named(lines: Iterable[dict[str, Any]], name: str, **match: Any) -> list[dict[str, Any]]:
    return [
        line
        for line in lines
        if line.get("event") == name and all(line.get(k) == v for k, v in match.items())
    ]


async def test_json_log_lines_carry_connection_events(start_hubd: StartHubd) -> None:
    server = await start_hubd(log={"format": "json"}, hub={"max_message_bytes": MAX_MESSAGE_BYTES})
    async with subscribe(server.port, "pdfm,health") as leaver:
        await ping(leaver)
    async with subscribe(server.port, "health", SUB_KEY) as big:
        await big.send(TOO_BIG)
        reason = await big.closed()
        assert reason.code == 1009
    refused_ip = client_ip()
    rejection_error(await rejected(server.port, "pdfm", bearer("nope"), ip=refused_ip), 401)
    for ip in (leaver.ip, big.ip):
        await server.wait_for_line(closed_line(ip))
    server.terminate()
    await server.wait_eof()

    lines = json_lines(server.output)
    (connected,) = events_named(lines, "connected", ip=leaver.ip)
    assert connected["client_id"] == leaver.client_id
    assert connected["principal"] == "sub"
    assert connected["channels"] == ["pdfm", "health", "global"] == leaver.subscriptions
    assert (connected["level"], connected["logger"]) == ("info", "hubd.connections")

    (closed,) = events_named(lines, "closed", ip=leaver.ip)
    assert closed["client_id"] == leaver.client_id
    assert closed["principal"] == "sub"
    assert closed["channels"] == ["pdfm", "health", "global"]
    assert closed["code"] == "peer"
    assert closed["reason"] == "client closed"
    assert closed["dropped"] == 0

    (closed,) = events_named(lines, "closed", ip=big.ip)
    assert closed["client_id"] == big.client_id
    assert closed["principal"] == "sub-key"
    assert closed["channels"] == ["health", "global"]
    assert closed["code"] == 1009
    assert closed["reason"] == f"message too big: {len(TOO_BIG)} bytes, limit {MAX_MESSAGE_BYTES}"

    (refusal,) = events_named(lines, "rejected", ip=refused_ip)
    assert (refusal["status"], refusal["error"]) == (401, "unauthorized")

    lifecycle = [line["event"] for line in lines if line["logger"] == "hubd"]
    assert lifecycle == ["starting", "ready", "draining", "stopped"]
    assert all(line["level"] == "info" for line in lines)


async def test_text_log_lines_carry_code_and_reason(start_hubd: StartHubd) -> None:
    server = await start_hubd(hub={"max_message_bytes": MAX_MESSAGE_BYTES})
    async with subscribe(server.port, "pdfm,health") as leaver:
        await ping(leaver)
    async with subscribe(server.port, "health", SUB_KEY) as big:
        await big.send(TOO_BIG)
        assert (await big.closed()).code == 1009

    prefix = r"^\d{4}-\d{2}-\d{2}T\S+Z INFO    hubd\.connections: "
    await server.wait_for_line(
        re.compile(
            prefix + f"connected client_id={leaver.client_id} ip={re.escape(leaver.ip)} "
            r"principal=sub channels=pdfm,health,global batch=False write=direct$"
        )
    )
    await server.wait_for_line(
        re.compile(
            prefix + f"closed client_id={leaver.client_id} ip={re.escape(leaver.ip)} "
            r'principal=sub channels=pdfm,health,global code=peer reason="client closed" '
            r"dropped=0$"
        )
    )
    await server.wait_for_line(
        re.compile(
            prefix + f"closed client_id={big.client_id} ip={re.escape(big.ip)} "
            r"principal=sub-key channels=health,global code=1009 "
            rf'reason="message too big: {len(TOO_BIG)} bytes, limit {MAX_MESSAGE_BYTES}" '
            r"dropped=0$"
        )
    )
    for line in server.lines:
        assert TEXT_LINE.match(line), line


# -- logs: the journal ---------------------------------------------------------------------


async def start_on_journal(
    nursery: trio.Nursery, config_path: Path, env: dict[str, str]
) -> HubdProcess:
    """Run `hubd serve` with stderr on a pipe whose device:inode is in $JOURNAL_STREAM,
    as systemd does with its journal stream socket."""
    read_fd, write_fd = os.pipe()
    try:
        st = os.fstat(write_fd)
        process = await trio.lowlevel.open_process(
            [HUBD, "serve", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=write_fd,
            env={**os.environ, **env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    process.stderr = trio.lowlevel.FdStream(read_fd)
    return await HubdProcess.attach(nursery, process, config_path)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_journal_lines_start_with_their_priority(
    nursery: trio.Nursery, tmp_path: Path, fmt: str
) -> None:
    config_path = write_config(tmp_path / "hubd.toml", log={"format": fmt})
    # A NOTIFY_SOCKET that is not a socket path: a warning at start.
    server = await start_on_journal(nursery, config_path, {"NOTIFY_SOCKET": "not-a-socket"})
    try:
        async with subscribe(server.port, "pdfm") as client:
            await server.wait_for_line(re.compile(rf"\bconnected\b.*{re.escape(client.ip)}"))
        # An invalid file on SIGHUP: an error, and the running configuration stays.
        config_path.write_text("[hub\n", encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for_line(re.compile("reload rejected"))
        server.terminate()
        await server.wait_eof()
    finally:
        await server.aclose()

    priorities = []
    for line in server.lines:
        m = re.match(r"^<(\d)>", line)
        assert m, line
        rest = line[m.end() :]
        if fmt == "json":
            level = json.loads(rest)["level"]
        else:
            # No timestamp: the journal stamps each line itself.
            assert re.match(r"^[A-Z]+ +hubd[\w.]*: ", rest), line
            level = rest.split()[0].lower()
        assert int(m.group(1)) == PRIORITY[level], line
        priorities.append(int(m.group(1)))
    assert {3, 4, 6} <= set(priorities)
    if fmt == "text":
        text = "\n".join(server.lines)
        assert "<4>WARNING hubd: NOTIFY_SOCKET='not-a-socket' is not a unix socket path" in text
        assert "<6>INFO    hubd: ready listening=http://" in text
        assert "<3>ERROR   hubd: reload rejected" in text
        assert "<6>INFO    hubd.connections: connected client_id=" in text


async def test_journal_stream_of_another_file_keeps_timestamps(
    start_hubd: StartHubd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A $JOURNAL_STREAM inherited from a parent whose journal is not our stderr."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.touch()
    st = os.stat(elsewhere)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    server = await start_hubd()
    server.terminate()
    await server.wait_eof()
    assert len(server.lines) >= 4
    for line in server.lines:
        assert TEXT_LINE.match(line), line


# -- logs: secrets -------------------------------------------------------------------------

WRONG_SECRETS = [
    "wrong-bearer-secret-7c1e",
    "wrong-api-key-secret-5d2b",
    "wrong-query-secret-9a4f",
    "basic-scheme-secret-3e8d",
    "wrong-publish-key-secret-1b6c",
    "wrong-admin-secret-4f0a",
]


async def test_no_secret_is_ever_logged(start_hubd: StartHubd) -> None:
    server = await start_hubd(log={"level": "debug"})
    port = server.port
    secrets = [t["token"] for t in TOKENS if "token" in t]
    secrets += [k["key"] for k in API_KEYS]
    secrets += ["hashed-token", *WRONG_SECRETS]
    bad_bearer, bad_key, bad_query, basic, bad_publish, bad_admin = WRONG_SECRETS

    async with http_client(server.url) as http:

        async def post(path: str, body: Any, headers: dict[str, str], status: int) -> Any:
            response = await http.post(path, json=body, headers=headers)
            assert response.status_code == status, response.text
            return response.json()

        async with (
            subscribe(port, "pdfm,health", SUB) as by_bearer,
            subscribe(port, "pdfm,health", SUB_KEY) as by_key,
            subscribe(port, "pdfm,orchestrator", access_token="sub2-token") as by_query,
            subscribe(port, "pdfm", bearer("hashed-token")),
            subscribe(port, "pdfm", SUB_PDFM),
            subscribe(port, "pdfm,health", PUBSUB) as pubsub,
            subscribe(port, "pdfm", access_token="admin-token"),
        ):
            # Refused handshakes: unknown secrets by every route, and roles or channels
            # the credential lacks.
            for headers, token in [
                (bearer(bad_bearer), None),
                ({"X-Api-Key": bad_key}, None),
                (None, bad_query),
                ({"Authorization": f"Basic {basic}"}, None),
            ]:
                exc = await rejected(port, "pdfm", headers, access_token=token)
                rejection_error(exc, 401)
            rejection_error(await rejected(port, "orchestrator", SUB_PDFM), 403)
            rejection_error(await rejected(port, "pdfm", PUB), 403)

            # Publishes by every route, allowed and not.
            await post("/v1/events", event(), PUB, 202)
            await post("/v1/events", event(), PUB_TOKEN, 202)
            await post("/v1/events?access_token=pub-tok-token", event(), {}, 202)
            await post("/v1/events", event(), PUB_PDFM, 202)
            await post("/v1/events", event("orchestrator"), PUB_PDFM, 403)
            await post("/v1/events", event(), PUBSUB, 202)
            await post("/v1/events", event(), {"X-Api-Key": bad_publish}, 401)
            await post("/v1/events", event(), bearer(bad_bearer), 401)
            await post(f"/v1/events?access_token={bad_query}", event(), {}, 401)
            await post("/v1/events", event(), SUB, 403)

            # Unsubscribes: the owner, an admin by query, another principal, bad secrets.
            body = {"client_id": by_bearer.client_id, "event_types": ["pdfm"]}
            await post("/v1/ws/unsubscribe", body, SUB, 200)
            body = {"client_id": by_query.client_id, "event_types": ["orchestrator"]}
            await post("/v1/ws/unsubscribe?access_token=admin-token", body, {}, 200)
            body = {"client_id": by_key.client_id, "event_types": ["pdfm"]}
            await post("/v1/ws/unsubscribe", body, SUB2, 403)
            await post("/v1/ws/unsubscribe", body, bearer(bad_admin), 401)
            await post("/v1/ws/unsubscribe", body, SUB_KEY, 200)

            # Admin views with every credential route.
            for path in ("/v1/ws/stats", "/v1/ws/clients", "/metrics"):
                assert (await http.get(path, headers=ADMIN)).status_code == 200
                response = await http.get(path, params={"access_token": "admin-token"})
                assert response.status_code == 200
                assert (await http.get(path, headers=bearer(bad_admin))).status_code == 401
                assert (await http.get(path, headers={"X-Api-Key": bad_key})).status_code == 401
                response = await http.get(path, params={"access_token": bad_query})
                assert response.status_code == 401
                assert (await http.get(path, headers=SUB)).status_code == 403
                assert (await http.get(path, headers=PUB)).status_code == 403

            # Frames, answered and refused.
            await ping(pubsub)
            await by_query.send({"event_type": "health", "message": "nope", "id": "bad"})
            reply, _ = await by_query.until(lambda e: e.get("ref_id") == "bad")
            assert reply["message"] == "error"

        # A reload re-reads every credential.
        server.process.send_signal(signal.SIGHUP)
        await server.wait_for_line(re.compile(r"\breloaded\b"))

    server.terminate()
    await server.wait_eof()
    output = server.output
    for secret in secrets:
        assert secret not in output, f"{secret!r} appears in the log:\n{output}"
    # The log did record all of this (the check above is not vacuous).
    for needle in (
        "connected client_id=",
        "principal=hashed",
        "principal=sub-key",
        "principal=admin",
        "rejected ip=",
        "status=401",
        "status=403",
        "unsubscribed client_id=",
        "closed client_id=",
        "reloaded config=",
    ):
        assert needle in output, needle


# -- metrics -------------------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[str, ...], float]:
    """Every sample of `name`, keyed by its label values."""
    return {tuple(v for _, v in k): value for (n, k), value in samples.items() if n == name}


def moved(after: Samples, before: Samples, name: str) -> dict[tuple[str, ...], float]:
    """How much each series of `name` changed (series that did not change left out)."""
    now, then = series(after, name), series(before, name)
    out = {k: now.get(k, 0.0) - then.get(k, 0.0) for k in now.keys() | then.keys()}
    return {k: v for k, v in out.items() if v}


async def scrape(http: httpx.AsyncClient, **kwargs: Any) -> Samples:
    response = await http.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == PROMETHEUS
    return parse_metrics(response.text)


async def test_metrics_count_real_traffic_exactly(start_hubd: StartHubd) -> None:
    server = await start_hubd(hub={"max_message_bytes": MAX_MESSAGE_BYTES})
    port = server.port
    async with http_client(server.url) as http:
        before = await scrape(http, headers=ADMIN)
        async with subscribe(port, "pdfm,health") as a, subscribe(port, "pdfm", SUB2) as b:
            rejection_error(await rejected(port, "pdfm", bearer("nope")), 401)
            rejection_error(await rejected(port, "pdfm", PUB), 403)
            async with subscribe(port, "health", SUB_KEY) as big:
                await big.send(TOO_BIG)
                assert (await big.closed()).code == 1009
            response = await http.post(
                "/v1/events", json=[event(body=i) for i in range(3)], headers=PUB
            )
            assert response.status_code == 202, response.text
            response = await http.post("/v1/events", json=event("orchestrator"), headers=PUB)
            assert response.status_code == 202, response.text
            for client in (a, b):
                assert [(await client.recv())["body"] for _ in range(3)] == [0, 1, 2]
            error = await a.request("not json")
            assert error["message"] == "error"
            await ping(a)
            await server.wait_for_line(closed_line(big.ip))
            during = await scrape(http, headers=ADMIN)
            ips = [a.ip, b.ip]

        def delta(name: str, **labels: str) -> float:
            return sample(during, name, **labels) - sample(before, name, **labels)

        assert delta("hubd_connections_open") == 2
        assert moved(during, before, "hubd_channel_subscribers") == {
            ("global",): 2,
            ("pdfm",): 2,
            ("health",): 1,
        }
        assert delta("hubd_connections_accepted_total") == 3
        assert moved(during, before, "hubd_connections_rejected_total") == {
            ("unauthorized", "401"): 1,
            ("forbidden", "403"): 1,
        }
        assert moved(during, before, "hubd_connections_closed_total") == {("1009",): 1}
        assert moved(during, before, "hubd_events_published_total") == {
            ("pdfm",): 3,
            ("orchestrator",): 1,
        }
        assert moved(during, before, "hubd_events_delivered_total") == {("pdfm",): 6}
        assert moved(during, before, "hubd_events_dropped_total") == {}
        assert delta("hubd_delivery_latency_seconds_count") == 6
        assert delta("hubd_delivery_latency_seconds_bucket", le="+Inf") == 6
        assert delta("hubd_delivery_latency_seconds_sum") > 0
        assert delta("hubd_frames_received_total") == 3
        assert delta("hubd_frame_errors_total") == 2
        assert sample(during, "hubd_queue_depth") == 0
        assert sample(during, "hubd_queue_depth_max") == 0
        # The first scrape's own answer, and the two publishes.
        assert moved(during, before, "hubd_http_requests_total") == {
            ("/metrics", "200"): 1,
            ("/v1/events", "202"): 2,
        }
        assert sample(during, "hubd_build_info", version=__version__) == 1
        assert sample(during, "hubd_draining") == 0
        assert sample(during, "hubd_uptime_seconds") > 0

        # Both clients closed their sockets.
        for ip in ips:
            await server.wait_for_line(closed_line(ip))
        after = await scrape(http, headers=ADMIN)
        assert sample(after, "hubd_connections_open") == sample(before, "hubd_connections_open")
        assert moved(after, before, "hubd_channel_subscribers") == {}
        assert moved(after, during, "hubd_connections_closed_total") == {("peer",): 2}
        assert moved(after, during, "hubd_events_delivered_total") == {}
        assert moved(after, during, "hubd_connections_accepted_total") == {}


async def test_metrics_listener_serves_metrics_only_without_credentials(
    start_hubd: StartHubd,
) -> None:
    metrics_port = free_port()
    server = await start_hubd(metrics={"listen": f"{HOST}:{metrics_port}"})
    assert (HOST, metrics_port) in server.binds
    assert f"metrics={HOST}:{metrics_port}" in server.output

    not_found = ["/", "/v1/health", "/v1/ready", "/v1/ws/stats", "/v1/ws/clients", "/metricsx"]
    async with http_client(f"http://{HOST}:{metrics_port}") as listener:
        first = await scrape(listener)
        assert sample(first, "hubd_build_info", version=__version__) == 1
        # Credentials are neither needed nor looked at.
        await scrape(listener, headers=bearer("nope"))
        await scrape(listener, headers=SUB)
        for path in not_found:
            error = assert_json_error(await listener.get(path, headers=ADMIN), 404)
            assert error["error"] == "not_found"
            assert "/metrics" in error["message"]
        assert_json_error(await listener.post("/metrics", content=b""), 404)
        assert_json_error(await listener.post("/v1/events", json=event(), headers=PUB), 404)
        # No subscribing there either.
        # Nor subscribing.
        error = rejection_error(await rejected(metrics_port, "pdfm", SUB), 404)
        assert error["error"] == "not_found"

    async with http_client(server.url) as main:
        assert_json_error(await main.get("/metrics"), 401)
        assert_json_error(await main.get("/metrics", headers=SUB), 403)
        samples = await scrape(main, headers=ADMIN)
        assert (await main.get("/v1/health")).status_code == 200

    # Every answer above was counted (the last scrape does not count itself).
    requests = moved(samples, first, "hubd_http_requests_total")
    assert requests == {
        ("/metrics", "200"): 3,  # the first scrape, then two more, on the listener
        ("other", "404"): len(not_found) + 2,
        ("/metrics", "401"): 1,
        ("/metrics", "403"): 1,
    }
    assert sample(first, "hubd_http_requests_total", route="/metrics", status="200") == 0


# -- health and readiness ------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_health_needs_no_credentials(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    for headers in ({}, bearer("nope")):
        response = await http.get(f"{prefix}/health", headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"status", "version", "uptime_seconds"}
        assert body["status"] == "ok"
        assert body["version"] == __version__
        assert isinstance(body["uptime_seconds"], int | float)
        assert body["uptime_seconds"] > 0


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_ready_when_serving(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    response = await http.get(f"{prefix}/ready")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"status": "ready", "backplane": "memory"}


# -- the admin clients view ----------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_clients_view_lists_a_connected_client(
    hub_server: SessionHubd, http: httpx.AsyncClient, prefix: str
) -> None:
    async with subscribe(hub_server.port, "pdfm,health", SUB_KEY) as client:
        await ping(client)
        response = await http.get(f"{prefix}/ws/clients", headers=ADMIN)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        view = find_client(response.json(), client.client_id)
        assert view["principal"] == "sub-key"
        assert view["ip"] == client.ip
        assert view["connected_at"] == client.confirmation["timestamp"]
        assert TIMESTAMP.match(view["connected_at"]), view
        assert TIMESTAMP.match(view["last_seen"]), view
        assert view["subscriptions"] == ["pdfm", "health", "global"]
        assert view["queue_depth"] == 0
        assert view["dropped"] == 0
        assert view["batch"] is False
        assert view["closing"] is False
        assert isinstance(view["queue_capacity"], int) and view["queue_capacity"] > 0

        # Unsubscribing shows at once; the token in the query works too.
        response = await http.post(
            "/v1/ws/unsubscribe",
            json={"client_id": client.client_id, "event_types": ["pdfm"]},
            headers=SUB_KEY,
        )
        assert response.status_code == 200, response.text
        response = await http.get(f"{prefix}/ws/clients", params={"access_token": "admin-token"})
        assert response.status_code == 200, response.text
        view = find_client(response.json(), client.client_id)
        assert view["subscriptions"] == ["health", "global"]
