"""Budget tests run against a real control plane on each test database, with webhook delivery fast enough to
watch (the services fixtures otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.server import ControlPlane
from services.settings import ServerSettings
from tests.services.conftest import admin_secret, channel, tokens

__all__ = ["admin_secret", "channel", "control_plane", "tokens"]


def budget_settings(database_url: str, data_dir: Path) -> ServerSettings:
    return ServerSettings(
        listen="127.0.0.1:0",
        data_dir=data_dir,
        database_url=database_url,
        drain_delay=timedelta(0),
        ingest_workers=0,
        shutdown_grace=timedelta(seconds=1),
        webhook_delivery_interval=timedelta(milliseconds=50),
        webhook_max_backoff=timedelta(milliseconds=200),
        webhook_timeout=timedelta(seconds=2),
        budget_alert_poll_interval=timedelta(milliseconds=50),
    )


@pytest.fixture
async def control_plane(database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(budget_settings(database_url, tmp_path / "var")) as plane:
        yield plane
