"""Console tests run a control plane with the console on (--http-listen) on a free loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.server import ControlPlane
from tests.console.harness import console_settings, console_url


@pytest.fixture
async def control_plane(database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(console_settings(database_url, tmp_path / "var")) as plane:
        yield plane


@pytest.fixture
async def http(control_plane: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of the console: keeps cookies, does not follow redirects."""
    async with httpx.AsyncClient(base_url=console_url(control_plane), timeout=30) as client:
        yield client
