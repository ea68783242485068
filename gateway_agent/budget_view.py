"""Local admission decisions from the applied config (disabled API keys) and, later, budget snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meterwire.config.v1 import config_service_pb2 as config_pb

BUDGETS_NOT_ENFORCED = "budgets not enforced by this version"
DISABLED_KEY_HTTP_STATUS = 403


@dataclass(frozen=True)
class CheckRequest:
    """What the gateway knows about a request before it routes it."""

    api_key_id: str = ""
    user_id: str = ""
    requested_model: str = ""
    route: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """Whether to serve a request; when denied, what to answer the caller."""

    allowed: bool
    reason: str
    http_status: int = 0
    """The HTTP status to answer with when denied; 0 when allowed."""
    message: str = ""
    """The message for the caller when denied."""
    config_version: int = 0
    """The config version the decision was made with; 0: none applied yet."""


class BudgetView:
    """Decides from local state only (microseconds, never the network), so it also works offline."""

    def __init__(self) -> None:
        self._disabled_keys: frozenset[str] = frozenset()
        self._config_version = 0

    def apply_config(self, config_version: config_pb.ConfigVersion) -> None:
        self._disabled_keys = frozenset(config_version.config.disabled_api_key_ids)
        self._config_version = int(config_version.version)

    def check(self, request: CheckRequest) -> Decision:
        if request.api_key_id and request.api_key_id in self._disabled_keys:
            return Decision(
                allowed=False,
                reason=f"api key {request.api_key_id!r} is disabled by config version {self._config_version}",
                http_status=DISABLED_KEY_HTTP_STATUS,
                message="API key disabled",
                config_version=self._config_version,
            )
        return Decision(allowed=True, reason=BUDGETS_NOT_ENFORCED, config_version=self._config_version)
