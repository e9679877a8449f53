"""Headless Chromium (Debian's package) driven by Playwright, against a real server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.servers import Server, start_server, stop_server

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    found = os.environ.get("FASTSVD_CHROMIUM") or shutil.which("chromium")
    if found is None:
        pytest.fail("no Chromium: run scripts/install-browser (or set FASTSVD_CHROMIUM)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module-scoped: Playwright's sync API holds an event loop on this thread while it runs,
    # which later asyncio.run() calls in other modules must not find.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real pipeline on the tiny preset (random miniature models), one worker."""
    running = start_server(
        tmp_path_factory.mktemp("browser"), FASTSVD_RUNNER="", FASTSVD_PRESET="tiny"
    )
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    assert not errors, f"JavaScript errors in {request.node.name}: {errors}"
