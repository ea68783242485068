"""Telemetry tests reuse the token fixtures of tests/services on a control plane hosting only what they need."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from services.server import ControlPlane
from services.settings import ServerSettings, ServiceName


@pytest.fixture(params=[0, 1], ids=["in-loop", "worker"])
def ingest_workers(request: pytest.FixtureRequest) -> int:
    """Batches prepared in the event loop (0, the default) and in a worker process (1)."""
    workers: int = request.param
    return workers


@pytest.fixture
async def control_plane(database_url: str, tmp_path: Path, ingest_workers: int) -> AsyncIterator[ControlPlane]:
    # Telemetry and Admin (for tokens) only, so these tests exercise ingest and nothing else's startup.
    settings = ServerSettings(
        ingest_workers=ingest_workers,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=database_url,
        services=frozenset({ServiceName.TELEMETRY, ServiceName.ADMIN}),
        drain_delay=timedelta(0),
        shutdown_grace=timedelta(seconds=1),
    )
    async with ControlPlane(settings) as plane:
        yield plane
