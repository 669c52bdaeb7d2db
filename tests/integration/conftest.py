"""Fixtures of the browser tests (the console): Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = os.environ.get("EVSTATE_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = Path(CHROMIUM).exists()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless chromium (the system's: Playwright downloads no browser here)."""
    if not HAVE_CHROMIUM:
        pytest.fail(
            f"the console tests need chromium at {CHROMIUM} "
            "(apt-get install chromium, or set EVSTATE_CHROMIUM)"
        )
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()
