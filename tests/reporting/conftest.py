"""Reporting tests run a control plane hosting Telemetry (to ingest), Reporting and Admin (for tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.server import ControlPlane
from tests.reporting.settings import reporting_settings


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(reporting_settings(migrated_database_url, tmp_path / "var")) as plane:
        yield plane
