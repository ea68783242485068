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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Worker processes prepare batches on SQLite only: what a worker hands back is rows, the same for either
    database, and the PostgreSQL writer gets rows from the in-loop runs (saves a worker start and a database
    per test)."""
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        on_postgresql_in_a_worker = params.get("ingest_workers") == 1 and params.get("storage_dialect") == "postgresql"
        (deselected if on_postgresql_in_a_worker else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path, ingest_workers: int) -> AsyncIterator[ControlPlane]:
    # Telemetry and Admin (for tokens) only, so these tests exercise ingest and nothing else's startup.
    settings = ServerSettings(
        ingest_workers=ingest_workers,
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=migrated_database_url,
        services=frozenset({ServiceName.TELEMETRY, ServiceName.ADMIN}),
        drain_delay=timedelta(0),
        shutdown_grace=timedelta(seconds=1),
    )
    async with ControlPlane(settings) as plane:
        yield plane
