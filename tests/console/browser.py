"""Playwright driving Debian's chromium (it cannot download a browser here): launching it, skipping with the
reason when it is missing (a failure where MW_REQUIRE_BROWSER=1 or CI=true), recording every JavaScript error of
a page, and saving screenshots as test artefacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Playwright

CHROMIUM: Final = Path(os.environ.get("MW_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ARTEFACTS: Final = Path(
    os.environ.get("MW_ARTEFACTS_DIR", Path(__file__).resolve().parents[2] / "tmp" / "artefacts" / "console")
)
"""Screenshots of every page the browser tests visit (README: Usage console)."""


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"no chromium at {CHROMIUM}: apt-get install -y chromium (or set MW_CHROMIUM)"
    if os.environ.get("MW_REQUIRE_BROWSER") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"browser tests are required here, but {reason}")
    pytest.skip(reason)


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True)


class JsErrors:
    """Console errors and uncaught exceptions of the pages it watches."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)

    def expected(self, fragment: str) -> list[str]:
        """Takes out (and returns) the messages a test caused on purpose, e.g. chromium's line for a 403 page."""
        taken = [message for message in self.messages if fragment in message]
        self.messages = [message for message in self.messages if fragment not in message]
        return taken

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.messages.append(f"console error on {message.location.get('url', '?')}: {message.text}")

    def _on_page_error(self, error: Error) -> None:
        self.messages.append(f"uncaught: {error}")


def screenshot(page: Page, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
