"""Fixtures for heartbeat tests: the live control plane, its fleet, and a clock the test moves by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from tests.services.conftest import admin_secret, channel, control_plane, tokens  # noqa: F401


class FakeClock:
    """A clock that moves only when told, so thresholds are crossed without sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        # Starts at the real time: a control plane derives loaded state once on the real clock at start.
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def fleet_of(plane: ControlPlane) -> Fleet:
    return plane.deps.fleet


@pytest.fixture
def fleet(control_plane: ControlPlane, clock: FakeClock) -> Fleet:  # noqa: F811
    """The live control plane's fleet, on the fake clock."""
    fleet = fleet_of(control_plane)
    fleet.clock = clock
    return fleet
