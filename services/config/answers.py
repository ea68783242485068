"""What WatchConfig reports about gateways (subscriptions, ACKs and NACKs), as an interface config defines.

The fleet (services/heartbeat) implements it; config never imports heartbeat, so the dependency runs one way:
heartbeat reads config (intervals, desired versions), config reports answers through this protocol.
"""

from __future__ import annotations

from typing import Protocol


class ConfigAnswers(Protocol):
    """Receives what agents say about the config versions pushed to them."""

    def config_subscribed(self, environment_id: str, gateway_id: str) -> None:
        """A gateway opened WatchConfig: it made contact (registered if new)."""

    def config_answered(self, environment_id: str, gateway_id: str, *, version: int, error: str | None) -> None:
        """A gateway applied (`error` None) or rejected `version`."""
