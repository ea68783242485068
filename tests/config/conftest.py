"""Fixtures for config tests: the same live control plane, fleet and hand-moved clock as heartbeat tests."""

from __future__ import annotations

from tests.heartbeat.conftest import clock, fleet  # noqa: F401
from tests.services.conftest import admin_secret, channel, control_plane, tokens  # noqa: F401
