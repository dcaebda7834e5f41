"""The browser of the page tests: the machine's Chromium, headless, driven by Playwright.

``async with chromium() as browser:`` in a test file's ``browser`` fixture; only the tests that
drive a page import this (Playwright stays out of the others' start-up).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"  # `scripts/services chromium` installs it


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium for the block, closed after it; fails at once when it is missing."""
    assert shutil.which("chromium"), "Chromium is missing: run scripts/services chromium"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield launched
        finally:
            await launched.close()
