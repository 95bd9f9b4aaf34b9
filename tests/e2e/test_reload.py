"""Reloading a running daemon with SIGHUP: removed credentials are cut off (4401) while
every other connection stays, new credentials and limits apply at once, an invalid file
changes nothing, and what needs a restart is logged and left as it was. `hubd check-config
--against-running` tells in advance what a reload would change, from the configuration the
daemon records in its runtime directory."""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from ..helpers import (
    ADMIN,
    API_KEYS,
    HOST,
    PUB,
    PUB_PDFM,
    SUB,
    SUB2,
    SUB_PDFM,
    TOKENS,
    assert_json_error,
    bearer,
    config_for,
    event,
    render_config,
    write_config,
)
from .conftest import StartHubd
from .helpers import HUBD, HubdProcess, http_client, rejected, rejection_error, subscribe

pytestmark = pytest.mark.e2e

NEW_TOKEN = {"name": "newcomer", "token": "newcomer-token", "roles": ["subscriber"]}
NEW_KEY = {"name": "new-pub", "key": "new-pub-key", "roles": ["publisher"]}
NEW_PUB = {"X-Api-Key": "new-pub-key"}


def with_credentials(
    config: dict[str, Any],
    *,
    drop: tuple[str, ...] = (),
    add_tokens: tuple[dict[str, Any], ...] = (),
    add_keys: tuple[dict[str, Any], ...] = (),
    replace: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """`config` with the named credentials dropped, some added, and some replaced by name
    (the shared credential lists are not modified)."""
    by_name = {c["name"]: c for c in replace}

    def keep(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [by_name.get(c["name"], c) for c in entries if c["name"] not in drop]

    return {
        **config,
        "auth": {
            "tokens": keep(TOKENS) + list(add_tokens),
            "api_keys": keep(API_KEYS) + list(add_keys),
        },
    }


async def reload_with(server: HubdProcess, config: dict[str, Any], logged: str) -> None:
    """Rewrite the daemon's config file, send SIGHUP and wait for a log line matching
    `logged` (each test waits for lines it has not matched before)."""
    server.config_path.write_text(render_config(config), encoding="utf-8")
    server.process.send_signal(signal.SIGHUP)
    await server.wait_for_line(re.compile(logged))


async def test_sighup_revokes_removed_credentials_and_keeps_the_other_connections(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd()
    async with (
        http_client(server.url) as http,
        subscribe(server.port, "pdfm", SUB) as kept,
        subscribe(server.port, "pdfm", SUB2) as revoked,
        subscribe(server.port, "pdfm,health", SUB_PDFM) as narrowed,
    ):
        response = await http.post("/v1/events", json=event("pdfm", "BEFORE"), headers=PUB_PDFM)
        assert response.status_code == 202, response.text
        for sub in (kept, revoked, narrowed):
            assert (await sub.recv())["message"] == "BEFORE"
        assert (await http.post("/v1/events", json=event(), headers=NEW_PUB)).status_code == 401

        sub_health_only = {**TOKENS[2], "channels": ["health"]}
        assert sub_health_only["name"] == "sub-pdfm"
        new = with_credentials(
            config_for(),
            drop=("sub2", "pub-pdfm"),
            add_tokens=(NEW_TOKEN,),
            add_keys=(NEW_KEY,),
            replace=(sub_health_only,),
        )
        await reload_with(server, new, r"\breloaded\b.*\brevoked=1 narrowed=1\b")

        reason = await revoked.closed()
        assert (reason.code, reason.reason) == (4401, "credentials revoked")
        notice = await narrowed.recv()
        assert (notice["event_type"], notice["message"]) == ("global", "unsubscribed")
        assert notice["body"] == {"unsubscribed": ["pdfm"], "subscriptions": ["health", "global"]}

        # The untouched connection keeps receiving, with nothing in between.
        response = await http.post("/v1/events", json=event("pdfm", "AFTER"), headers=PUB)
        assert response.status_code == 202, response.text
        got = await kept.recv()
        assert (got["message"], got["id"]) == ("AFTER", response.json()["id"])
        # The narrowed one is still connected but no longer gets pdfm: the next frame it
        # receives is this global marker, not AFTER.
        response = await http.post("/v1/events", json=event("global", "MARKER"), headers=ADMIN)
        assert response.status_code == 202, response.text
        assert (await kept.recv())["message"] == "MARKER"
        assert (await narrowed.recv())["message"] == "MARKER"

        # The removed credentials are refused everywhere.
        rejection_error(await rejected(server.port, "pdfm", SUB2), 401)
        response = await http.post("/v1/events", json=event(), headers=PUB_PDFM)
        assert_json_error(response, 401)

        # The added ones work.
        async with subscribe(server.port, "pdfm", bearer("newcomer-token")) as newcomer:
            response = await http.post("/v1/events", json=event("pdfm", "NEW"), headers=NEW_PUB)
            assert response.status_code == 202, response.text
            assert (await newcomer.recv())["message"] == "NEW"
            assert (await kept.recv())["message"] == "NEW"
    assert server.process.returncode is None


async def test_sighup_applies_lowered_limits(start_hubd: StartHubd) -> None:
    server = await start_hubd()
    big = event("pdfm", "BIG", body={"pad": "x" * 2000})
    async with (
        http_client(server.url) as http,
        subscribe(server.port, "pdfm") as first,
        subscribe(server.port, "pdfm") as second,
    ):
        response = await http.post("/v1/events", json=big, headers=PUB)
        assert response.status_code == 202, response.text
        for sub in (first, second):
            assert (await sub.recv())["message"] == "BIG"

        lowered = config_for(limits={"max_connections": 2}, hub={"max_publish_bytes": 1000})
        await reload_with(server, lowered, r"\breloaded\b.*\brevoked=0\b")

        error = rejection_error(await rejected(server.port, "pdfm", SUB), 503)
        assert error["error"] == "at_capacity"
        error = assert_json_error(await http.post("/v1/events", json=big, headers=PUB), 413)
        assert "1000" in error["message"]
        # The open connections stay and small events still flow.
        response = await http.post("/v1/events", json=event("pdfm", "SMALL"), headers=PUB)
        assert response.status_code == 202, response.text
        for sub in (first, second):
            assert (await sub.recv())["message"] == "SMALL"


async def test_an_invalid_config_is_rejected_and_the_old_one_keeps_running(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd()
    async with http_client(server.url) as http, subscribe(server.port, "pdfm", SUB2) as sub:
        # Invalid: an unknown key. It also drops sub2, which must not take effect.
        invalid = with_credentials(config_for(hub={"idle_timout": 5}), drop=("sub2",))
        await reload_with(
            server, invalid, r"\breload rejected\b.*unknown key 'idle_timout' in \[hub\]"
        )

        assert server.process.returncode is None
        assert (await http.get("/v1/health")).status_code == 200
        response = await http.post("/v1/events", json=event("pdfm", "STILL"), headers=PUB)
        assert response.status_code == 202, response.text
        assert (await sub.recv())["message"] == "STILL"
        async with subscribe(server.port, "pdfm", SUB2) as again:
            assert again.subscriptions == ["pdfm", "global"]

        # A valid file afterwards is applied.
        await reload_with(
            server, with_credentials(config_for(), drop=("sub2",)), r"\breloaded\b.*\brevoked=1\b"
        )
        reason = await sub.closed()
        assert (reason.code, reason.reason) == (4401, "credentials revoked")
    assert "Traceback" not in server.output


async def test_restart_only_changes_are_logged_and_not_applied(
    start_hubd: StartHubd,
) -> None:
    server = await start_hubd()
    async with http_client(server.url) as http, subscribe(server.port, "pdfm") as sub:
        # A new listen address, TLS turned on and compression: all need a restart. The
        # credential change in the same file applies.
        changed = with_credentials(
            config_for(
                server={
                    "listen": [f"{HOST}:{server.port}"],
                    "tls_cert": "/nonexistent/cert.pem",
                    "tls_key": "/nonexistent/key.pem",
                },
                hub={"compression": True},
            ),
            drop=("sub2",),
        )
        await reload_with(server, changed, r"\breloaded\b")
        for key in ("server.listen", "server.tls_cert", "server.tls_key", "hub.compression"):
            await server.wait_for_line(
                re.compile(rf"WARNING.*reload: {re.escape(key)}: .*needs a restart")
            )

        # Still plain HTTP and WebSocket on the old address.
        assert server.process.returncode is None
        assert (await http.get("/v1/health")).status_code == 200
        response = await http.post("/v1/events", json=event("pdfm", "PLAIN"), headers=PUB)
        assert response.status_code == 202, response.text
        assert (await sub.recv())["message"] == "PLAIN"
        rejection_error(await rejected(server.port, "pdfm", SUB2), 401)
    assert "Traceback" not in server.output


async def test_check_config_against_running_tells_what_the_reload_then_does(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
    path = write_config(tmp_path / "hubd.toml", hub={"queue_size": 64})
    server = await HubdProcess.start(nursery, path, env=env)
    try:
        record = runtime / "running-config.json"
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert "sub-token" not in record.read_text(encoding="utf-8")

        # An edited copy: one key a reload applies, one only a restart does.
        edited = tmp_path / "edited.toml"
        text = path.read_text(encoding="utf-8")
        assert "queue_size = 64\n" in text and text.startswith("[server]\n")
        edited.write_text(
            text.replace("queue_size = 64\n", "queue_size = 128\n").replace(
                "[server]\n", "[server]\nmax_header_bytes = 32768\n", 1
            ),
            encoding="utf-8",
        )

        async def against_running() -> list[str]:
            result = await trio.run_process(
                [HUBD, "check-config", "-c", str(edited), "--against-running"],
                env=env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            out, err = result.stdout.decode(), result.stderr.decode()
            assert result.returncode == 0, (out, err)
            assert err == ""
            lines = out.splitlines()
            assert lines[0].startswith(f"{edited}: ok: ") and " backplane=memory " in lines[0]
            return lines[lines.index(next(x for x in lines if x.startswith("against "))) :]

        lines = await against_running()
        assert re.fullmatch(
            rf"against the running hubd \(pid {server.process.pid}, config {re.escape(str(path))}, "
            r"recorded \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\):",
            lines[0],
        ), lines[0]
        assert lines[1:] == [
            "  server.max_header_bytes: 65536 -> 32768  "
            "[restart needed: the HTTP server is set up at start]",
            "  hub.queue_size: 64 -> 128",
            "reload: 1 key would apply at once; 1 key would wait for a restart: "
            "server.max_header_bytes",
            f"note: the running hubd reloads {path}; put this file there first",
        ]

        # The reload does what it said.
        path.write_text(edited.read_text(encoding="utf-8"), encoding="utf-8")
        server.process.send_signal(signal.SIGHUP)
        reloaded = await server.wait_for_line(
            re.compile(r"\breloaded\b.* changed=(\S+) restart_pending=(\S+)$")
        )
        assert reloaded.groups() == ("hub.queue_size", "server.max_header_bytes")
        await server.wait_for_line(
            re.compile(r"WARNING.*reload: server\.max_header_bytes: a change needs a restart")
        )

        # Recorded again: now only the restart is left.
        assert (await against_running())[1:3] == [
            "  server.max_header_bytes: 65536 -> 32768  "
            "[restart needed: the HTTP server is set up at start]",
            "reload: 0 keys would apply at once; 1 key would wait for a restart: "
            "server.max_header_bytes",
        ]
    finally:
        await server.aclose()
    assert "Traceback" not in server.output
