"""/docs and /redoc in headless Chromium, with no network but the service's own.

A real server process (tests/server.py) serves the pages; Selenium drives
the system's Chromium through the system's chromedriver (so Selenium
Manager never runs, and nothing is downloaded). The browser's network is
cut off except for 127.0.0.1: every host name but 127.0.0.1 fails to
resolve, and anything else goes to a proxy that is not there. Chrome's own
background traffic (updates, sync, field trials) is switched off.

Each page must render every operation of /openapi.json, and no request may
leave for another host: the DevTools network events list every request the
page made; one to another origin passes only if the browser itself refused
to send it (blocked by the page's Content-Security-Policy).

The browser is not optional: when it is missing the test fails (CI installs
it: `apt-get install -y chromium chromium-driver`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from tests.databases import create_fresh_database, migrate
from tests.server import RunningServer, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGUMENTS = [
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-dev-shm-usage",
    # No network but the service's: no name resolves but 127.0.0.1, and
    # anything not on 127.0.0.1 (an address literal too) goes to a proxy on
    # a port where nothing listens.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=127.0.0.1",
    # No traffic of Chrome's own.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-default-browser-check",
    "--no-first-run",
]
PAGE_TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The service as a real process; the pages touch no database, so SQLite."""
    directory = tmp_path_factory.mktemp("docs-server")
    url = create_fresh_database("sqlite", directory)
    migrate(url)
    with running_server(url, directory / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    for program in (CHROMIUM, CHROMEDRIVER):
        if not program.is_file():
            pytest.fail(
                f"{program} is missing: apt-get install -y chromium chromium-driver "
                "(.ci/run installs them)"
            )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # A driver path given: Selenium Manager is not asked for (or to fetch) one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def documented_operations(server: RunningServer) -> dict[str, tuple[str, str, str]]:
    """{operationId: (tag, METHOD, path)} of the service's /openapi.json."""
    document = httpx.get(f"{server.base_url}/openapi.json").json()
    return {
        operation["operationId"]: (operation["tags"][0], method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def open_page(browser: WebDriver, url: str) -> None:
    browser.get_log("performance")  # forget what came before
    browser.get_log("browser")
    browser.get(url)


def wait_for(browser: WebDriver, css: str, count: int) -> list[Any]:
    """The elements matching `css`, once there are at least `count` of them."""
    WebDriverWait(browser, PAGE_TIMEOUT_SECONDS).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, css)) >= count
    )
    return list(browser.find_elements(By.CSS_SELECTOR, css))


def network_events(browser: WebDriver, quiet_seconds: float = 1.0) -> list[dict[str, Any]]:
    """The page's DevTools network events, once none came for `quiet_seconds`."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + PAGE_TIMEOUT_SECONDS
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_seconds and time.monotonic() < deadline:
        entries = browser.get_log("performance")
        if entries:
            quiet_since = time.monotonic()
        events += [json.loads(entry["message"])["message"] for entry in entries]
        time.sleep(0.1)
    return [event for event in events if event["method"].startswith("Network.")]


def assert_no_request_left(browser: WebDriver, server: RunningServer) -> None:
    events = network_events(browser)
    sent = {
        event["params"]["requestId"]: event["params"]["request"]["url"]
        for event in events
        if event["method"] == "Network.requestWillBeSent"
    }
    failures = {
        event["params"]["requestId"]: event["params"]
        for event in events
        if event["method"] == "Network.loadingFailed"
    }

    def is_local(url: str) -> bool:
        return url.startswith((f"{server.base_url}/", "data:", "blob:"))

    left = [
        url
        for request_id, url in sent.items()
        if not is_local(url) and not failures.get(request_id, {}).get("blockedReason")
    ]
    assert left == [], "requests left for other hosts"
    assert any(url == f"{server.base_url}/openapi.json" for url in sent.values())
    failed_locally = {
        url: failures[id_]["errorText"]
        for id_, url in sent.items()
        if id_ in failures and is_local(url)
    }
    assert failed_locally == {}
    # A refusal by the Content-Security-Policy is reported as a "security"
    # error; anything else (a script error, a failed load) fails the test.
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and entry["source"] != "security"
    ]
    assert errors == []


def test_swagger_ui_shows_every_operation_without_leaving_localhost(
    browser: WebDriver, docs_server: RunningServer
) -> None:
    operations = documented_operations(docs_server)

    open_page(browser, f"{docs_server.base_url}/docs")
    blocks = wait_for(browser, ".opblock", len(operations))

    shown = {
        block.get_attribute("id"): (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in blocks
    }
    assert shown == {
        f"operations-{tag}-{operation_id}": (method, path)
        for operation_id, (tag, method, path) in operations.items()
    }
    assert_no_request_left(browser, docs_server)


def test_redoc_shows_every_operation_without_leaving_localhost(
    browser: WebDriver, docs_server: RunningServer
) -> None:
    operations = documented_operations(docs_server)

    open_page(browser, f"{docs_server.base_url}/redoc")
    sections = wait_for(browser, "[data-section-id^='operation/']", len(operations))

    shown = {section.get_attribute("data-section-id") for section in sections}
    assert shown == {f"operation/{operation_id}" for operation_id in operations}
    assert_no_request_left(browser, docs_server)
