"""Budget tests run against a real control plane on each test database, with webhook delivery fast enough to
watch (the services fixtures otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.server import ControlPlane
from tests.budget.settings import budget_settings


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(budget_settings(migrated_database_url, tmp_path / "var")) as plane:
        yield plane
