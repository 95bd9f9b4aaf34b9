"""What the browser tests need: a headless Chromium driven by Selenium, hubd daemons with the
console on, and `ConsolePage`, the page's element ids and `data-*` attributes seen from a
test (the user's view of them is docs/console.md).

- `browser_missing()` / `start_chromium()`: Debian's chromium and chromium-driver, never a
  downloaded browser or driver (`SE_OFFLINE=true`, explicit paths).
- `write_console_config()`: the e2e test config plus `[console] enabled = true` and the
  console's own admin credential (`OPERATOR_TOKEN`, principal `console-operator`).
- `publish()`, `browser_clients()`: the HTTP side, from the test (not from the browser).
- `Allowed` and its constructors: the browser-log lines one test expects (a refused
  credential, a daemon that is down); every other SEVERE line and every CSP line fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    JavascriptException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from ..helpers import ADMIN, API_KEYS, PUB, TOKENS, config_for, render_config

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# CI sets it: a missing browser is then a failure, not a skip.
REQUIRE_BROWSER = "HUBD_REQUIRE_BROWSER"
# Set to 1 to also write the screenshots into docs/console/ (the user doc shows them).
SCREENSHOTS = "HUBD_CONSOLE_SCREENSHOTS"
DOCS_SCREENSHOTS = REPO / "docs" / "console"

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,800",
)

# The address the browser connects from (and so the one WebSocket slot it holds).
BROWSER_IP = "127.0.0.1"
STORAGE_KEY = "hubd.console.credential"

# The console's own credential: an admin whose name is not a word the page shows anyway.
OPERATOR_NAME = "console-operator"
OPERATOR_TOKEN = "console-operator-token"
OPERATOR: dict[str, Any] = {"name": OPERATOR_NAME, "token": OPERATOR_TOKEN, "roles": ["admin"]}

# Bounds for things that take milliseconds; only reached when something is broken.
WAIT = 10.0
POLL = 0.02

T = TypeVar("T")


# -- Chromium -------------------------------------------------------------------------------


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install -y {package}"
    return None


def start_chromium(profile: Path) -> WebDriver:
    """A headless Chromium with a fresh profile in `profile`, logging its console (`browser`)
    and its network events (`performance`) for the tests to read."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


# -- hubd -----------------------------------------------------------------------------------


def write_console_config(path: Path, **sections: Mapping[str, Any]) -> Path:
    """The e2e test config (every test credential) with the console on and `OPERATOR`."""
    config = config_for(console={"enabled": True}, **sections)
    config["auth"] = {"tokens": [*TOKENS, OPERATOR], "api_keys": list(API_KEYS)}
    path.write_text(render_config(config), encoding="utf-8")
    return path


def publish(
    base_url: str, events: Mapping[str, Any] | Sequence[Mapping[str, Any]], headers: Any = PUB
) -> list[str]:
    """POST /v1/events (one event or a batch) as the publisher; the ids of the 202."""
    response = httpx.post(f"{base_url}/v1/events", json=events, headers=headers, timeout=WAIT)
    assert response.status_code == 202, response.text
    body = response.json()
    return [body["id"]] if isinstance(events, Mapping) else list(body["ids"])


def clients(base_url: str) -> list[dict[str, Any]]:
    """GET /v1/ws/clients as an admin."""
    response = httpx.get(f"{base_url}/v1/ws/clients", headers=ADMIN, timeout=WAIT)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["clients"]
    return found


def browser_clients(base_url: str) -> list[dict[str, Any]]:
    """The connections the browser holds on that daemon ([] when it is not running)."""
    try:
        return [c for c in clients(base_url) if c["ip"] == BROWSER_IP]
    except httpx.ConnectError:
        return []


# -- the browser log ------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """One browser-log line a test expects: its source and its whole message."""

    source: str
    message: re.Pattern[str]

    def matches(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("source") == self.source and bool(
            self.message.fullmatch(str(entry.get("message", "")))
        )


_ORIGIN = r"http://127\.0\.0\.1:\d+"
_QUERY = r"(?:\?[^ ]*)?"


def failed_status(path: str, status: int) -> Allowed:
    """`fetch()` got an HTTP error status: Chromium logs every such answer as SEVERE."""
    return Allowed(
        "network",
        re.compile(
            rf"{_ORIGIN}{re.escape(path)}{_QUERY} - Failed to load resource: "
            rf"the server responded with a status of {status} \([^)]*\)"
        ),
    )


def failed_connect(path: str) -> Allowed:
    """`fetch()` found nothing listening (the daemon is down)."""
    return Allowed(
        "network",
        re.compile(
            rf"{_ORIGIN}{re.escape(path)}{_QUERY} - Failed to load resource: "
            r"net::ERR_CONNECTION_REFUSED"
        ),
    )


def websocket_failed(reason: str) -> Allowed:
    """A subscribe WebSocket that did not open, for `reason` (Chromium's words)."""
    return Allowed(
        "network",
        re.compile(
            # Prefixed with where the socket was opened: a console module and its line.
            rf"(?:{_ORIGIN}/console/[a-z]+\.js \d+(?::\d+)? )?WebSocket connection to "
            r"'ws://127\.0\.0\.1:\d+/v1/ws/subscribe(?:\?[^']*)?' failed: " + re.escape(reason)
        ),
    )


WS_REFUSED = "Error in connection establishment: net::ERR_CONNECTION_REFUSED"


def log_problems(entries: Iterable[Mapping[str, Any]], allowed: Sequence[Allowed]) -> list[str]:
    """Every CSP line (whatever its level) and every SEVERE line not in `allowed`."""
    problems = []
    for entry in entries:
        message = str(entry.get("message", ""))
        csp = "Content Security Policy" in message or "Content-Security-Policy" in message
        if entry.get("level") != "SEVERE" and not csp:
            continue
        if not csp and any(a.matches(entry) for a in allowed):
            continue
        problems.append(f"{entry.get('level')} [{entry.get('source')}] {message}")
    return problems


# -- the page -------------------------------------------------------------------------------


class ConsolePage:
    """The console in the shared browser, on the daemon at `base_url`."""

    def __init__(self, driver: WebDriver, base_url: str, shots: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots
        self.log: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/console"

    # -- waiting --

    def wait(self, within: float = WAIT) -> WebDriverWait[WebDriver]:
        return WebDriverWait(
            self.driver,
            within,
            poll_frequency=POLL,
            ignored_exceptions=(
                NoSuchElementException,
                StaleElementReferenceException,
                ElementClickInterceptedException,
            ),
        )

    def until(self, condition: Callable[[], T], message: str, within: float = WAIT) -> T:
        """Poll `condition` until it returns something truthy (never a fixed sleep)."""
        return self.wait(within).until(lambda _driver: condition(), message)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The rendered text of the first match ('' when there is none)."""
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text.strip() if found else ""

    def displayed(self, css: str) -> bool:
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return bool(found) and found[0].is_displayed()

    def click(self, css: str, within: float = WAIT) -> None:
        """Click what `css` matches, finding it again if a refresh replaced it meanwhile."""

        def clicked() -> bool:
            self.find(css).click()
            return True

        self.until(clicked, f"could not click {css}", within)

    # -- signing in --

    def open(self) -> None:
        self.driver.get(self.url)

    def sign_in(self, secret: str, kind: str = "token") -> None:
        self.until(lambda: self.displayed("#signin-form"), "the sign-in form is not shown")
        Select(self.find("select#credential-kind")).select_by_value(kind)
        field = self.find("input#credential")
        field.clear()
        field.send_keys(secret)
        self.find("button#signin-button").click()

    def wait_signed_in(self, principal: str) -> None:
        self.until(
            lambda: principal in self.text("#whoami"),
            f"#whoami never showed {principal!r} (it shows {self.text('#whoami')!r}; "
            f"#signin-error: {self.text('#signin-error')!r})",
        )

    def stored_credential(self) -> Any:
        stored = self.js(f"return sessionStorage.getItem({json.dumps(STORAGE_KEY)})")
        return None if stored is None else json.loads(stored)

    # -- the tail --

    def tail_state(self) -> str:
        found = self.driver.find_elements(By.CSS_SELECTOR, "#tail-status")
        return (found[0].get_attribute("data-state") or "") if found else ""

    def wait_state(self, state: str, within: float = WAIT) -> None:
        self.until(
            lambda: self.tail_state() == state,
            f"#tail-status never became {state!r} (it is {self.tail_state()!r}: "
            f"{self.text('#tail-status')!r})",
            within,
        )

    def wait_tail_open(self, within: float = WAIT) -> str:
        """Wait until the live tail is open and knows its client id (so the server has
        registered the connection); returns that id."""
        self.wait_state("open", within)
        return self.until(
            lambda: self.js("return document.querySelector('#tail-client-id').textContent.trim()"),
            "#tail-client-id stayed empty on an open tail",
        )

    def row_ids(self) -> list[str]:
        """The `data-id` of every `.event-row`, in page order (newest first)."""
        ids: list[str] = self.js(
            "return Array.from(document.querySelectorAll('#tail-events .event-row'),"
            " (row) => row.getAttribute('data-id'))"
        )
        return ids

    def wait_rows(self, ids: Iterable[str], within: float = WAIT) -> list[str]:
        wanted = set(ids)
        return self.until(
            lambda: wanted <= set(rows := self.row_ids()) and rows,
            f"rows {sorted(wanted)} did not all appear in #tail-events within {within} s "
            f"(it holds {self.row_ids()})",
            within,
        )

    def row(self, event_id: str) -> WebElement:
        return self.find(f'#tail-events .event-row[data-id="{event_id}"]')

    def notes(self, kind: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, f'#tail-notes .note[data-kind="{kind}"]')

    # -- views --

    def show(self, view: str) -> None:
        """Click the tab of `view` and wait until its view is the one shown."""
        self.click(f"button#tab-{view}")
        self.until(
            lambda: self.js(
                "const views = ['tail', 'publish', 'clients', 'stats'];"
                "return views.every((v) => document.getElementById('view-' + v)"
                "  .hasAttribute('hidden') === (v !== arguments[0]));",
                view,
            ),
            f"#view-{view} is not the only view shown after clicking #tab-{view}",
        )

    # -- evidence --

    def screenshot(self, name: str) -> Path:
        """Save the window as `<name>.png` in the test's tmp_path, and in docs/console/ when
        HUBD_CONSOLE_SCREENSHOTS=1."""
        path = self.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, (path, len(data))
        if os.environ.get(SCREENSHOTS) == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_SCREENSHOTS / f"{name}.png")
        return path

    def drain_logs(self) -> None:
        """Forget what the browser logged so far (an earlier test's lines)."""
        self.driver.get_log("browser")
        self.driver.get_log("performance")

    def check_log(self, *allowed: Allowed) -> None:
        """No CSP violation and no SEVERE line (JS error, failed request) but `allowed`."""
        self.log += self.driver.get_log("browser")
        problems = log_problems(self.log, allowed)
        assert not problems, "the browser logged:\n" + "\n".join(problems)

    def network(self) -> list[tuple[str, dict[str, Any]]]:
        """The DevTools network events (method, params) since the last call."""
        events = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if str(message.get("method", "")).startswith("Network."):
                events.append((message["method"], message.get("params", {})))
        return events

    def leave(self) -> None:
        """Sign out the hard way: forget the credential, leave the page, and wait until the
        daemon has let go of the browser's WebSocket (one per IP: the next test needs it)."""
        try:
            if self.driver.current_url.startswith(self.base_url):
                self.js("sessionStorage.clear()")
        except JavascriptException:
            pass
        self.driver.get("about:blank")
        self.until(
            lambda: not browser_clients(self.base_url),
            "the daemon still lists the browser's connection after the page was left",
        )


def requested_urls(events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Every URL asked for in `events` (HTTP requests and WebSocket handshakes)."""
    urls = []
    for method, params in events:
        if method == "Network.requestWillBeSent":
            urls.append(params["request"]["url"])
        elif method == "Network.webSocketCreated":
            urls.append(params["url"])
    return urls


def handshake_headers(
    events: Iterable[tuple[str, Mapping[str, Any]]], method: str
) -> list[dict[str, str]]:
    """The headers (names lower-cased) of each WebSocket handshake request
    (`Network.webSocketWillSendHandshakeRequest`) or response
    (`Network.webSocketHandshakeResponseReceived`) in `events`."""
    key = "request" if "Request" in method else "response"
    return [
        {name.lower(): value for name, value in params[key]["headers"].items()}
        for m, params in events
        if m == method
    ]
