"""Screenshots of the browser tests, kept after the run as artifacts."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page

from tests.support.servers import ROOT

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"  # kept: what each state looks like


def shot(page: Page, name: str) -> Path:
    """Save a screenshot of the whole page as a test artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
