"""Budget tests run against a real control plane on each test database (the services fixtures)."""

from __future__ import annotations

from tests.services.conftest import admin_secret, channel, control_plane, tokens

__all__ = ["admin_secret", "channel", "control_plane", "tokens"]
