"""Reporting tests run a control plane hosting Telemetry (to ingest), Reporting and Admin (for tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.server import ControlPlane
from services.settings import ServerSettings, ServiceName
from tests.services.conftest import admin_secret, channel, tokens  # noqa: F401


@pytest.fixture
async def control_plane(database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    # The background compaction is off: tests compact explicitly, so they know which rollups are dirty.
    settings = ServerSettings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=database_url,
        services=frozenset({ServiceName.TELEMETRY, ServiceName.REPORTING, ServiceName.ADMIN}),
        drain_delay=timedelta(0),
        shutdown_grace=timedelta(seconds=1),
        rollup_compaction_interval=timedelta(0),
        ingest_workers=0,  # tests/telemetry prepares batches both ways
    )
    async with ControlPlane(settings) as plane:
        yield plane
