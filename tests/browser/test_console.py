"""The web console in a real Chromium against a real `hubd serve`: sign-in, the live tail
(delivery, pause/resume, filter, detail, reconnect with resume after a restart), publish,
the clients view (unsubscribe), stats, and the page's security headers.

Each test drives the page only through the element ids and `data-*` attributes the page
promises its tests (see hubd/console/static/index.html) and checks the outcome on the server
too where there is one. Every test ends by reading the
browser's log: no CSP violation, and no SEVERE line (a JS error, a failed request) except
the ones that test provokes on purpose, matched exactly.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from ..e2e.helpers import SessionHubd
from ..helpers import ADMIN, HEX64, TIMESTAMP, event
from .helpers import (
    BROWSER_IP,
    OPERATOR_NAME,
    OPERATOR_TOKEN,
    SCREENSHOTS,
    WS_REFUSED,
    ConsolePage,
    browser_clients,
    clients,
    failed_connect,
    failed_status,
    handshake_headers,
    publish,
    requested_urls,
    websocket_failed,
    write_console_config,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

# The live tail's channels on first sign-in (global is always delivered).
DEFAULT_CHANNELS = ["pdfm", "orchestrator", "health"]

# The page's policy, exactly as the contract states it.
CSP = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'none'"],
}


def signed_in(console: ConsolePage, secret: str = OPERATOR_TOKEN, *, kind: str = "token") -> str:
    """Open the page, sign in, wait for the live tail; returns its client id."""
    console.open()
    console.sign_in(secret, kind)
    return console.wait_tail_open()


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def assert_subprotocol_auth(network: list[tuple[str, dict[str, Any]]], offered: str) -> None:
    """Every subscribe handshake in `network` offered `hubd.v1, <offered>` and no other
    credential; every answer selected `hubd.v1`."""
    requests = handshake_headers(network, "Network.webSocketWillSendHandshakeRequest")
    assert requests, "no WebSocket handshake was seen"
    for headers in requests:
        protocols = [p.strip() for p in headers["sec-websocket-protocol"].split(",")]
        assert protocols == ["hubd.v1", offered], protocols
        assert not {"authorization", "x-api-key"} & set(headers), headers
    responses = handshake_headers(network, "Network.webSocketHandshakeResponseReceived")
    assert responses and all(h["sec-websocket-protocol"] == "hubd.v1" for h in responses)


def type_into(field: WebElement, text: str) -> None:
    """Replace a field's text the way a user does (select all, delete, type), so that the
    page sees input events."""
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)
    if text:
        field.send_keys(text)


def published_count(base_url: str) -> int:
    response = httpx.get(f"{base_url}/v1/ws/stats", headers=ADMIN)
    assert response.status_code == 200, response.text
    count: int = response.json()["published"]
    return count


# -- 1. sign-in -----------------------------------------------------------------------------


def test_sign_in_shows_the_principal_and_keeps_the_credential_in_session_storage(
    console: ConsolePage, hub: SessionHubd
) -> None:
    console.open()
    console.sign_in(OPERATOR_TOKEN)
    console.wait_signed_in(OPERATOR_NAME)
    client_id = console.wait_tail_open()

    # The credential is in sessionStorage, as the contract spells it, and nowhere else.
    assert console.stored_credential() == {"kind": "token", "secret": OPERATOR_TOKEN}
    local = console.js("return JSON.stringify(Object.entries(localStorage))")
    assert OPERATOR_TOKEN not in local and b64url(OPERATOR_TOKEN) not in local, local
    # Never in a URL: not the page's, not any request's (HTTP or WebSocket).
    network = console.network()
    urls = [console.driver.current_url, *requested_urls(network)]
    assert any("/v1/ws/subscribe" in url for url in urls), urls
    leaks = [u for u in urls if OPERATOR_TOKEN in u or b64url(OPERATOR_TOKEN) in u]
    assert not leaks and not [u for u in urls if "access_token" in u], urls
    # The socket carries it as a subprotocol beside hubd.v1; the server selects hubd.v1
    # and never echoes the credential.
    assert_subprotocol_auth(network, f"bearer.{b64url(OPERATOR_TOKEN)}")
    # The WebSocket it opened is this principal's, from the browser.
    (mine,) = browser_clients(hub.url)
    assert (mine["client_id"], mine["principal"]) == (client_id, OPERATOR_NAME)
    assert set(mine["subscriptions"]) == {*DEFAULT_CHANNELS, "global"}

    # Leaving the page and coming back in the same tab signs in from sessionStorage.
    console.driver.get("about:blank")
    console.until(lambda: not browser_clients(hub.url), "the socket outlived the page")
    console.open()
    console.wait_signed_in(OPERATOR_NAME)
    console.wait_tail_open()
    assert not console.displayed("#signin-form")

    # Sign-out forgets the credential and closes the socket.
    console.click("button#signout-button")
    console.until(lambda: console.displayed("#signin-form"), "no sign-in form after sign-out")
    assert console.stored_credential() is None
    console.until(lambda: not browser_clients(hub.url), "the socket outlived the sign-out")
    console.check_log()


def test_sign_in_with_an_api_key_shows_only_the_tabs_its_roles_allow(
    console: ConsolePage, hub: SessionHubd
) -> None:
    # pubsub-key: principal `pubsub`, roles publisher and subscriber (not admin).
    client_id = signed_in(console, "pubsub-key", kind="api_key")
    console.wait_signed_in("pubsub")
    assert console.stored_credential() == {"kind": "api_key", "secret": "pubsub-key"}
    assert_subprotocol_auth(console.network(), f"apikey.{b64url('pubsub-key')}")
    (mine,) = browser_clients(hub.url)
    assert (mine["client_id"], mine["principal"]) == (client_id, "pubsub")
    shown = {tab: console.displayed(f"button#tab-{tab}") for tab in ("tail", "publish")}
    hidden = {tab: console.displayed(f"button#tab-{tab}") for tab in ("clients", "stats")}
    assert shown == {"tail": True, "publish": True}
    assert hidden == {"clients": False, "stats": False}
    console.check_log()


# -- 2. live tail ---------------------------------------------------------------------------


def test_a_published_event_appears_in_the_tail_within_a_second(
    console: ConsolePage, hub: SessionHubd
) -> None:
    signed_in(console)
    body = {"vm": "vm-42", "state": "running", "host": "hv-07"}
    (event_id,) = publish(hub.url, event("pdfm", "VM_STATE_CHANGED", body=body))
    # Timed from the 202.
    console.wait_rows([event_id], within=1.0)
    row = console.row(event_id)
    assert row.get_attribute("data-channel") == "pdfm"
    assert row.get_attribute("data-message") == "VM_STATE_CHANGED"
    assert "vm-42" in row.text and "VM_STATE_CHANGED" in row.text
    assert console.row_ids()[0] == event_id

    # More traffic, for the screenshot of a busy tail (newest first).
    more = publish(
        hub.url,
        [
            event("orchestrator", "NODE_DRAINED", body={"node": "node-3", "reason": "upgrade"}),
            event("pdfm", "VM_MIGRATED", body={"vm": "vm-17", "from": "hv-02", "to": "hv-05"}),
            event("pdfm", "VM_STATE_CHANGED", body={"vm": "vm-8", "state": "stopped"}),
            event("orchestrator", "CLUSTER_DEGRADED", body={"cluster": "eu-1", "nodes_down": 1}),
        ],
    )
    console.wait_rows(more)
    assert console.row_ids()[:5] == [*reversed(more), event_id]
    console.screenshot("tail")
    console.check_log()


def test_clicking_a_row_shows_the_whole_envelope(console: ConsolePage, hub: SessionHubd) -> None:
    signed_in(console)
    body = {"vm": "vm-9", "disks": [{"id": "sda", "size_gb": 40}], "labels": {"tier": "db"}}
    (event_id,) = publish(hub.url, event("pdfm", "VM_RESIZED", body=body))
    console.wait_rows([event_id])
    console.row(event_id).click()
    detail = console.until(
        lambda: (text := console.text("pre#event-detail")).startswith("{") and text,
        "pre#event-detail did not show the envelope",
    )
    envelope = json.loads(detail)
    assert envelope["id"] == event_id
    assert (envelope["event_type"], envelope["message"], envelope["body"]) == (
        "pdfm",
        "VM_RESIZED",
        body,
    )
    assert TIMESTAMP.match(envelope["timestamp"]), envelope
    assert "\n  " in detail, "the JSON is not pretty-printed"
    console.screenshot("event-detail")
    console.check_log()


def test_the_filter_narrows_the_rows(console: ConsolePage, hub: SessionHubd) -> None:
    signed_in(console)
    vm, node, quiet = publish(
        hub.url,
        [
            event("pdfm", "VM_STATE_CHANGED", body={"vm": "vm-filter-1"}),
            event("orchestrator", "NODE_JOINED", body={"node": "node-filter-2"}),
            event("pdfm", "HOST_OK", body={"host": "hv-1"}),
        ],
    )
    console.wait_rows([vm, node, quiet])

    ours = {vm, node, quiet}

    def visible() -> set[str]:
        """Our rows the page shows: a filter may hide the others or take them out."""
        ids: list[str] = console.js(
            "return Array.from(document.querySelectorAll('#tail-events .event-row'))"
            ".filter((row) => row.checkVisibility()).map((row) => row.getAttribute('data-id'))"
        )
        return set(ids) & ours

    field = console.find("input#tail-filter")
    for text, expected in (
        ("vm_state", {vm}),  # the message, whatever the case
        ("NODE-FILTER", {node}),  # the body
        ("orchestr", {node}),  # the channel
        ("", ours),
    ):
        type_into(field, text)
        console.until(
            lambda e=expected: visible() == e,
            f"filter {text!r} should show {expected} (shows {visible()})",
        )
    console.check_log()


# -- 3. pause / resume ----------------------------------------------------------------------


def test_pause_buffers_events_and_resume_shows_them_in_order(
    console: ConsolePage, hub: SessionHubd
) -> None:
    signed_in(console)
    (before,) = publish(hub.url, event("pdfm", "BEFORE_PAUSE"))
    console.wait_rows([before])
    console.click("button#tail-pause")
    pause = console.find("button#tail-pause")
    assert (pause.text, pause.get_attribute("aria-pressed")) == ("Resume", "true")

    ids = publish(hub.url, [event("pdfm", f"PAUSED_{n}", body={"n": n}) for n in range(5)])
    console.until(
        lambda: console.text("#tail-buffered") == "5",
        f"#tail-buffered should count 5 (it shows {console.text('#tail-buffered')!r})",
    )
    # All five reached the page, none was shown.
    assert console.row_ids()[0] == before
    assert not set(ids) & set(console.row_ids())

    console.click("button#tail-pause")
    assert (pause.text, pause.get_attribute("aria-pressed")) == ("Pause", "false")
    console.wait_rows(ids)
    # Newest first: the reverse of the publish order, then what was there before.
    assert console.row_ids()[:6] == [*reversed(ids), before]
    console.until(lambda: console.text("#tail-buffered") in ("0", ""), "buffer not emptied")
    console.check_log()


# -- 4. a bad token -------------------------------------------------------------------------


def test_a_bad_token_shows_the_servers_message(console: ConsolePage, hub: SessionHubd) -> None:
    console.open()
    console.sign_in("not-a-real-token")
    message = console.until(
        lambda: console.displayed("#signin-error") and console.text("#signin-error"),
        "no #signin-error after a refused token",
    )
    # The 401's own message (`the bearer token presented is not valid`).
    assert "not valid" in message, message
    assert console.displayed("#signin-form")
    assert not console.displayed("#whoami")
    assert console.stored_credential() is None
    assert not browser_clients(hub.url)
    console.screenshot("signin-error")
    # The refusal itself, as Chromium reports it: the 401 of GET /v1/whoami. The page
    # checks the credential there first, so it never opens a WebSocket with a bad one.
    console.check_log(failed_status("/v1/whoami", 401))


# -- 5 and 6. clients -----------------------------------------------------------------------


def test_the_clients_table_lists_the_consoles_own_connection(
    console: ConsolePage, hub: SessionHubd
) -> None:
    client_id = signed_in(console)
    assert client_id == console.text("#tail-client-id")
    console.show("clients")
    row_css = f'#clients-table tr.client-row[data-client-id="{client_id}"]'
    console.until(lambda: console.displayed(row_css), f"no row for {client_id}")
    cells = [c.text for c in console.find(row_css).find_elements("css selector", "td")]
    assert client_id in cells[0], cells
    assert OPERATOR_NAME in cells[1], cells
    assert BROWSER_IP in cells[2], cells
    channels = {
        b.get_attribute("data-channel")
        for b in console.find(row_css).find_elements("css selector", "button.unsubscribe")
    }
    assert set(DEFAULT_CHANNELS) <= channels, channels
    assert console.text("#clients-updated")
    console.screenshot("clients")
    console.check_log()


def test_unsubscribe_from_the_clients_view_removes_the_channel(
    console: ConsolePage, hub: SessionHubd
) -> None:
    client_id = signed_in(console)
    console.show("clients")
    row_css = f'#clients-table tr.client-row[data-client-id="{client_id}"]'
    button = f'{row_css} button.unsubscribe[data-channel="pdfm"]'
    console.until(lambda: console.displayed(button), "no unsubscribe button for pdfm")
    console.click(button)

    def pdfm_gone() -> bool:
        row = console.find(row_css)
        listed = {
            b.get_attribute("data-channel")
            for b in row.find_elements("css selector", "button.unsubscribe")
        }
        return "pdfm" not in listed and "orchestrator" in listed

    console.until(pdfm_gone, "the row still lists pdfm after the unsubscribe")
    (mine,) = [c for c in clients(hub.url) if c["client_id"] == client_id]
    assert set(mine["subscriptions"]) == {"orchestrator", "health", "global"}
    assert not console.text("#clients-error")
    # The console's own connection lives on, without pdfm.
    assert console.tail_state() == "open"
    console.check_log()


# -- stats ----------------------------------------------------------------------------------


def test_the_stats_view_draws_its_charts(console: ConsolePage, hub: SessionHubd) -> None:
    signed_in(console)
    console.show("stats")
    # A few deliveries between polls, so that the deliveries chart has a slope.
    ids = publish(hub.url, [event("pdfm", "STATS_TICK", body={"n": n}) for n in range(20)])
    console.wait_rows(ids)

    def value(panel: str) -> str:
        return console.text(f"#stats-{panel} .value")

    connections = console.until(
        lambda: (m := re.search(r"\d+", value("connections"))) and int(m.group()),
        f"#stats-connections .value shows no count ({value('connections')!r})",
    )
    assert connections >= 1
    for panel in ("connections", "deliveries", "drops", "latency"):
        console.until(
            lambda p=panel: console.js(
                "const d = document.querySelector(arguments[0]);"
                "return d !== null && (d.getAttribute('d') || '').trim().length > 0;",
                f"#stats-{p} svg path",
            ),
            f"#stats-{panel} has no drawn svg path",
        )
        console.until(
            lambda p=panel: re.search(r"\d", value(p)),
            f"#stats-{panel} .value shows no figure ({value(panel)!r})",
        )
    if os.environ.get(SCREENSHOTS) == "1":
        # For the picture in docs/console.md only: a few more readings of uneven traffic,
        # so that the lines show something (one reading a second).
        def readings() -> int:
            path = console.find("#stats-deliveries svg path").get_attribute("d") or ""
            return len(re.findall(r"[ML]", path))

        for n in range(15):
            seen = readings()
            publish(hub.url, [event("pdfm", "STATS_TICK")] * (5 + (n * 7) % 23))
            console.until(lambda s=seen: readings() > s, "the stats stopped polling")
    console.screenshot("stats")
    console.check_log()


# -- publish --------------------------------------------------------------------------------


def test_the_publish_form_validates_the_body_and_shows_the_id(
    console: ConsolePage, hub: SessionHubd
) -> None:
    signed_in(console)
    console.show("publish")
    Select(console.find("select#publish-channel")).select_by_value("orchestrator")
    type_into(console.find("input#publish-message"), "NODE_CORDONED")
    body = console.find("textarea#publish-body")
    before = published_count(hub.url)

    # Not JSON: refused in the page, nothing sent. Submitted with Enter in the message
    # field (a click on the button could land only as the textarea's blur, which checks
    # the body too and moves the button down as the error appears).
    result = "#publish-result"
    type_into(body, '{"node": "node-4",')
    console.find("input#publish-message").send_keys(Keys.ENTER)
    console.until(
        lambda: console.displayed("#publish-body-error") and console.text("#publish-body-error"),
        "no #publish-body-error for a body that is not JSON",
    )
    assert console.find(result).get_attribute("data-state") != "ok"

    type_into(body, '{"node": "node-4", "reason": "maintenance"}')
    console.click("button#publish-submit")
    text = console.until(
        lambda: console.find(result).get_attribute("data-state") == "ok" and console.text(result),
        f"no successful #publish-result ({console.text(result)!r})",
    )
    (event_id,) = re.findall(r"[0-9a-f]{64}", text)
    assert HEX64.match(event_id)
    assert not console.displayed("#publish-body-error")
    # The console is subscribed to orchestrator: its own event comes back on the tail,
    # with the body typed last. The page sends one request at a time, so this one answered
    # last: the invalid body never went out.
    console.wait_rows([event_id])
    row = console.row(event_id)
    assert (row.get_attribute("data-channel"), row.get_attribute("data-message")) == (
        "orchestrator",
        "NODE_CORDONED",
    )
    preview = row.get_attribute("textContent") or ""  # the tail view is hidden: not .text
    assert "maintenance" in preview, preview
    assert published_count(hub.url) == before + 1
    console.screenshot("publish")

    # Valid JSON the server refuses (nested deeper than 64 levels): its message is shown.
    type_into(body, "[" * 70 + "]" * 70)
    console.click("button#publish-submit")
    console.until(
        lambda: (
            console.find(result).get_attribute("data-state") == "error"
            and "64 levels deep" in console.text(result)
        ),
        f"the server's refusal is not shown ({console.text(result)!r})",
    )
    assert published_count(hub.url) == before + 1
    console.check_log(failed_status("/v1/events", 400))


# -- 7. reconnect after a restart -----------------------------------------------------------


def test_reconnect_after_a_hubd_restart_resumes_from_the_last_event(
    browser: WebDriver, tmp_path: Path
) -> None:
    """The console reconnects by itself with `since=` its last event id: it gets the event
    published while it was away (through another daemon on the same history file and
    another port, so the console cannot have been connected to see it live), exactly once,
    with no duplicate of what it had and no `replay-incomplete` notice."""
    hub_settings = {"history_path": str(tmp_path / "history.db")}
    started: list[SessionHubd] = []

    def start(name: str, **sections: dict[str, object]) -> SessionHubd:
        server = SessionHubd(write_console_config(tmp_path / f"{name}.toml", **sections))
        started.append(server)
        return server

    def stop(server: SessionHubd) -> None:
        server.close()
        assert server.process.returncode == 0, server.output
        assert "history: stopped cleanly" in server.output, server.output

    first = start("first", hub=hub_settings)
    console = ConsolePage(browser, first.url, tmp_path)
    console.drain_logs()
    try:
        first_id = signed_in(console)
        (seen,) = publish(first.url, event("pdfm", "BEFORE_RESTART", body={"vm": "vm-1"}))
        console.wait_rows([seen])

        stop(first)
        console.wait_state("reconnecting")

        away = start("away", hub=hub_settings)  # port 0: not where the console looks
        while away.port == first.port:  # the kernel handed out the port just freed
            stop(away)
            away = start("away", hub=hub_settings)
        (missed,) = publish(away.url, event("pdfm", "WHILE_AWAY", body={"vm": "vm-2"}))
        stop(away)

        listen = {"listen": [f"{BROWSER_IP}:{first.port}"]}
        second = start("second", server=listen, hub=hub_settings)
        assert second.port == first.port
        console.wait_state("open", within=20.0)
        (now,) = console.until(lambda: browser_clients(second.url), "no reconnect seen")
        console.until(
            lambda: console.text("#tail-client-id") == now["client_id"],
            "#tail-client-id does not show the new connection's id",
        )
        assert now["client_id"] != first_id
        assert set(now["subscriptions"]) == {*DEFAULT_CHANNELS, "global"}

        # Replayed from the history file: only a since= resume can deliver it.
        console.wait_rows([missed])
        (after,) = publish(second.url, event("pdfm", "AFTER_RESTART", body={"vm": "vm-3"}))
        console.wait_rows([after])
        ids = console.row_ids()
        assert [i for i in ids if i in (seen, missed, after)] == [after, missed, seen], ids
        assert console.notes("reconnected"), "no reconnected notice"
        assert not console.notes("replay-incomplete"), "the resume was not complete"
        # While the daemon was down: refused connections, and nothing else.
        console.check_log(
            websocket_failed(WS_REFUSED),
            failed_connect("/v1/ws/subscribe"),  # the dry run that asks why
        )
    finally:
        console.leave()
        for server in started:
            server.close()


# -- 8. security headers and CSP ------------------------------------------------------------


def test_the_page_is_served_with_security_headers_and_loads_without_csp_violations(
    console: ConsolePage, hub: SessionHubd
) -> None:
    for path in ("/console", "/console/"):
        response = httpx.get(f"{hub.url}{path}")
        assert response.status_code == 200, (path, response.text)
        assert response.headers["content-type"].startswith("text/html"), response.headers
        policy = response.headers["content-security-policy"]
        directives = {
            name: values
            for name, *values in (part.split() for part in policy.split(";") if part.strip())
        }
        assert directives == CSP, policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] in (
            "no-referrer",
            "same-origin",
            "strict-origin",
            "strict-origin-when-cross-origin",
        ), response.headers
    script = httpx.get(f"{hub.url}/console/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript"), script.headers
    assert script.headers["x-content-type-options"] == "nosniff"

    # The page, signed in, with every view rendered: not one violation.
    client_id = signed_in(console)
    console.show("publish")
    console.show("clients")
    row = f'tr.client-row[data-client-id="{client_id}"]'
    console.until(lambda: console.displayed(row), "the clients view did not render")
    console.show("stats")
    console.until(
        lambda: console.js("return document.querySelector('#stats-connections svg') !== null"),
        "the stats view did not render",
    )
    console.show("tail")
    (event_id,) = publish(hub.url, event("pdfm", "CSP_CHECK", body={"x": 1}))
    console.wait_rows([event_id])
    console.row(event_id).click()
    console.until(lambda: event_id in console.text("pre#event-detail"), "no detail shown")
    assert console.js("return document.querySelectorAll('script:not([src])').length") == 0
    console.check_log()
