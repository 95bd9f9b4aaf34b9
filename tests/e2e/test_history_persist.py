"""`hub.history_path` over real restarts of `hubd serve`: a client that resumes after the
daemon was restarted gets what it missed, and is told honestly whether that was all.

- SIGTERM (clean stop): the history and the numbering carry over: `complete: true`.
- history_path off: a restarted daemon knows nothing: `complete: false`, nothing replayed.
- SIGKILL (unclean stop): events written before the kill are replayed, but the resume
  says `complete: false` (the last batch may be missing), and new ids jump ahead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from ..helpers import ADMIN, SUB, event
from .conftest import StartHubd
from .helpers import HubdProcess, Subscriber, client_ip, http_client, subscribe, ws_connect

pytestmark = pytest.mark.e2e

STOP = 15.0
UNCLEAN_JUMP = 2**32


def seq_of(event_id: str) -> int:
    return int(event_id[8:24], 16)


async def publish(server: HubdProcess, message: str, channel: str = "pdfm") -> str:
    async with http_client(server.url) as http:
        response = await http.post("/v1/events", json=event(channel, message), headers=ADMIN)
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def seen_and_missed(server: HubdProcess, ip: str) -> tuple[str, list[str]]:
    """A subscriber receives one event (its resume point), disconnects, then two more
    are published: returns the seen id and the missed ids."""
    async with subscribe(server.port, "pdfm", ip=ip) as client:
        seen = await publish(server, "P-SEEN")
        await client.until(lambda e: e["id"] == seen)
    missed = [await publish(server, "P-MISSED-1"), await publish(server, "P-MISSED-2")]
    return seen, missed


async def resume(server: HubdProcess, since: str, ip: str) -> tuple[dict[str, Any], list[str]]:
    """Resume on pdfm from `since`: the `replay_complete` notice and the replayed ids."""
    resource = "/v1/ws/subscribe?" + urlencode({"event_types": "pdfm", "since": since})
    async with ws_connect(server.port, ip, resource, SUB) as ws:
        client = Subscriber(ws, ip)
        client.confirmation = await client.recv()
        done, before = await client.until(lambda e: e["message"] == "replay_complete")
    return done, [e["id"] for e in before]


async def test_after_a_clean_restart_a_resume_is_complete(
    start_hubd: StartHubd, tmp_path: Path
) -> None:
    hub = {"history_path": str(tmp_path / "history.db")}
    first = await start_hubd(hub=hub)
    ip = client_ip()
    seen, missed = await seen_and_missed(first, ip)
    first.terminate()
    assert await first.wait_exit(STOP) == 0, first.output
    assert "history: stopped cleanly" in first.output

    second = await start_hubd(hub=hub)
    done, replayed = await resume(second, seen, ip)
    assert replayed == missed
    assert done["body"] == {"replayed": 2, "complete": True}
    # The same epoch, numbering continued.
    after = await publish(second, "P-AFTER")
    assert after[:8] == seen[:8]
    assert seq_of(after) == seq_of(missed[-1]) + 1
    # The file's figures are on /metrics.
    async with http_client(second.url) as http:
        text = (await http.get("/metrics", headers=ADMIN)).text
    assert "hubd_history_file_events_dropped_total 0.0" in text
    assert "hubd_history_file_events_lost_total 0.0" in text


async def test_without_history_path_a_restart_forgets_everything(
    start_hubd: StartHubd, tmp_path: Path
) -> None:
    # The same file, then the key turned off: what made the difference was the key.
    hub = {"history_path": str(tmp_path / "history.db")}
    first = await start_hubd(hub=hub)
    ip = client_ip()
    seen, _ = await seen_and_missed(first, ip)
    first.terminate()
    assert await first.wait_exit(STOP) == 0, first.output

    second = await start_hubd()
    done, replayed = await resume(second, seen, ip)
    assert replayed == []
    assert done["body"] == {"replayed": 0, "complete": False}


async def test_after_sigkill_kept_events_are_replayed_but_the_resume_is_incomplete(
    start_hubd: StartHubd, tmp_path: Path
) -> None:
    hub = {"history_path": str(tmp_path / "history.db")}
    first = await start_hubd(hub=hub, log={"level": "debug"})
    ip = client_ip()
    seen, missed = await seen_and_missed(first, ip)
    # Written behind: wait until the batch holding the last event is in the file.
    await first.wait_for_line(
        re.compile(rf"history: wrote \d+ event\(s\) up to seq {seq_of(missed[-1])}\b")
    )
    first.process.kill()
    await first.process.wait()

    second = await start_hubd(hub=hub)
    await second.wait_for_line(re.compile(r"history: .* was not closed cleanly"))
    done, replayed = await resume(second, seen, ip)
    assert replayed == missed
    assert done["body"] == {"replayed": 2, "complete": False}
    # No id a client may hold is issued again: the numbering jumped.
    after = await publish(second, "P-AFTER")
    assert after[:8] == seen[:8]
    assert seq_of(after) > seq_of(missed[-1]) + UNCLEAN_JUMP
    # A resume from an id issued after the restart is complete again.
    later = await publish(second, "P-LATER")
    done, replayed = await resume(second, after, client_ip())
    assert replayed == [later]
    assert done["body"]["complete"] is True


async def test_an_unusable_history_path_fails_the_start_naming_the_key(
    start_hubd: StartHubd, tmp_path: Path
) -> None:
    with pytest.raises(AssertionError, match=r"hub\.history_path: .*does not exist"):
        await start_hubd(hub={"history_path": str(tmp_path / "missing" / "history.db")})
