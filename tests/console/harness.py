"""A control plane serving the console for tests: its settings, a control plane on an event loop of its own (so
sync Playwright can drive a browser against it), sign-in over HTTP, and the KPI tiles of a rendered page."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx

from services.server import ControlPlane
from services.settings import ServerSettings

T = TypeVar("T")
_KPI = re.compile(r'data-kpi="([a-z-]+)"><span class="label">[^<]*</span><span class="value">([^<]*)</span>')


def console_settings(database_url: str, data_dir: Path, **overrides: Any) -> ServerSettings:
    """Every service and the console on free loopback ports; quick heartbeat thresholds for the fleet tests."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "database_url": database_url,
        "drain_delay": timedelta(0),
        "shutdown_grace": timedelta(seconds=1),
        "ingest_workers": 0,
        "heartbeat_interval": timedelta(seconds=1),
        "heartbeat_status_check_interval": timedelta(milliseconds=200),
    }
    return ServerSettings(**{**values, **overrides})


def console_url(plane: ControlPlane) -> str:
    url = plane.console_url
    assert url is not None, "the console is off (http_listen unset)"
    return url.rstrip("/")


def kpi_tiles(html: str) -> dict[str, str]:
    """The Usage page's tiles: data-kpi id -> the text shown."""
    return dict(_KPI.findall(html))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, "the page has no CSRF field"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, secret: str) -> httpx.Response:
    """Signs in through the form, as a browser does; returns the response to the form's POST."""
    form = await client.get("/login")
    return await client.post("/login", data={"csrf_token": csrf_of(form.text), "token": secret, "next": "/usage"})


class ThreadedControlPlane:
    """A control plane whose event loop runs in a background thread; `run(coro)` runs a coroutine there."""

    def __init__(self, settings: ServerSettings) -> None:
        self.plane = ControlPlane(settings)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="console-test-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self.run(self.plane.start())

    def run(self, coroutine: Coroutine[Any, Any, T], *, timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def stop(self) -> None:
        try:
            self.run(self.plane.shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
