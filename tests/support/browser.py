"""A headless Chromium for the tests, driven by Playwright with the system's browser.

Playwright's own browser downloads are not used: Debian's `chromium` is. Without it
(or without the playwright package) browser tests skip, saying what to install.
Screenshots go to the test's log directory, and to docs/screenshots/ as well when
UPDATE_SCREENSHOTS=1 (how the README's pictures are made).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = (
    "browser tests need Chromium: install it (Debian: apt-get install chromium; "
    "elsewhere set CHROMIUM=/path/to/chromium) and the dev dependencies (make install)"
)


def require_browser() -> None:
    if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
        pytest.skip(f"{MISSING}: no {CHROMIUM}")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip(f"{MISSING}: the playwright package is missing")


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """One browser, with a fresh profile (Playwright's launch makes a new one)."""
    require_browser()
    driver_module = importlib.import_module("playwright.async_api")
    async with driver_module.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Any, name: str, log_dir: Path) -> Path:
    """A full-page PNG of `page` in the log directory (and docs/screenshots/ on demand)."""
    path = log_dir / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)
    return path
