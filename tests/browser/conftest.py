"""Fixtures for the browser tests: one headless Chromium and one `hubd serve` (console on)
per module, and a fresh `ConsolePage` per test.

Chromium and chromedriver come from Debian (`apt-get install chromium chromium-driver`);
nothing is downloaded. Without them the tests are skipped, unless HUBD_REQUIRE_BROWSER=1
(CI), where that is a failure. The browser connects from 127.0.0.1, so it holds that
address's one WebSocket slot: each test leaves the page and waits until the daemon has let
go of the connection before the next one signs in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from ..e2e.helpers import SessionHubd
from .helpers import (
    REQUIRE_BROWSER,
    ConsolePage,
    browser_missing,
    start_chromium,
    write_console_config,
)

MARKERS = {
    "browser": "drives a real Chromium against the web console (Debian chromium and "
    "chromium-driver; skipped when missing unless HUBD_REQUIRE_BROWSER=1)",
    "e2e": "end-to-end test against a real `hubd serve` subprocess",
}


def pytest_configure(config: pytest.Config) -> None:
    # `e2e` is registered by tests/e2e/conftest.py too, which a run of tests/browser alone
    # does not load.
    known = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """A headless Chromium for the module's tests (their pages come and go in it)."""
    reason = browser_missing()
    if reason is not None:
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{reason} ({REQUIRE_BROWSER}=1 makes this a failure)", pytrace=False)
        pytest.skip(reason)
    saved = os.environ.get("SE_OFFLINE")
    # Selenium Manager must never fetch a browser or a driver.
    os.environ["SE_OFFLINE"] = "true"
    try:
        driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    finally:
        if saved is None:
            del os.environ["SE_OFFLINE"]
        else:
            os.environ["SE_OFFLINE"] = saved
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionHubd]:
    """A daemon with the console on, shared by the module's tests."""
    path = write_console_config(tmp_path_factory.mktemp("hubd") / "console.toml")
    server = SessionHubd(path)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def console(browser: WebDriver, hub: SessionHubd, tmp_path: Path) -> Iterator[ConsolePage]:
    """The console page on the shared daemon, signed out; left (and the browser's
    WebSocket closed) at the end of the test."""
    page = ConsolePage(browser, hub.url, tmp_path)
    page.drain_logs()
    try:
        yield page
    finally:
        page.leave()
