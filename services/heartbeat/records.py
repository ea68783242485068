"""One gateway's heartbeat state as plain values (the agent's report, the fleet's record, what operators see),
and its conversions to and from database rows. Protobuf stays in messages.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

GatewayName = tuple[str, str]
"""(environment_id, gateway_id)."""


class GatewayStatus(StrEnum):
    """What derive_status makes of a gateway's last heartbeat (messages.py maps it to the proto enum)."""

    HEALTHY = "healthy"
    STALE = "stale"
    OFFLINE = "offline"
    DEGRADED = "degraded"
    NEVER_SEEN = "never_seen"


@dataclass(frozen=True, slots=True)
class BudgetEnforcement:
    """One agent's decisions for one budget since it started."""

    budget_id: str
    denied_requests: int = 0
    """Requests the HARD_STOP budget denied."""
    shadow_denied_requests: int = 0
    """Requests the WARN_ONLY budget let through that a hard stop would have denied."""


@dataclass(frozen=True, slots=True)
class AgentState:
    """What an agent last reported about itself; every field range-checked at the edge (messages.py)."""

    agent_version: str = ""
    gateway_version: str = ""
    applied_config_version: int = 0
    nacked_config_version: int = 0
    config_error: str = ""
    spool_depth: int = 0
    oldest_unsent_age: timedelta | None = None
    """None: the spool is empty (unset), apart from "the oldest event is 0 s old"."""
    dead_letter_count: int = 0
    dropped_event_count: int = 0
    connected_since: datetime | None = None
    spool_bytes: int = 0
    last_acked_sequence: int = 0
    budget_snapshot_time: datetime | None = None
    """When the control plane last refreshed the agent's budget state; None: never (or an older agent)."""
    budget_enforcement: tuple[BudgetEnforcement, ...] = ()


@dataclass(slots=True)
class GatewayRecord:
    """Mutable on purpose: the heartbeat hot path updates it in place, one dict lookup per ping."""

    environment_id: str
    gateway_id: str
    register_time: datetime | None
    last_seen: datetime | None
    state: AgentState
    interval: timedelta
    status: GatewayStatus | None = None
    """None until first derived."""
    reasons: tuple[str, ...] = ()
    recheck_at: float = 0.0
    """Epoch seconds when the status must be derived again with no traffic (see derive_status)."""

    @property
    def name(self) -> GatewayName:
        return (self.environment_id, self.gateway_id)


@dataclass(frozen=True, slots=True)
class GatewayView:
    """A gateway as operators see it at one moment (a snapshot: the record goes on changing)."""

    environment_id: str
    gateway_id: str
    status: GatewayStatus | None
    reasons: tuple[str, ...]
    last_seen: datetime | None
    register_time: datetime | None
    state: AgentState
    interval: timedelta
    desired_config_version: int

    @classmethod
    def of(cls, record: GatewayRecord, *, desired_config_version: int) -> GatewayView:
        return cls(
            environment_id=record.environment_id,
            gateway_id=record.gateway_id,
            status=record.status,
            reasons=record.reasons,
            last_seen=record.last_seen,
            register_time=record.register_time,
            state=record.state,
            interval=record.interval,
            desired_config_version=desired_config_version,
        )


@dataclass(frozen=True, slots=True)
class GatewayChange:
    """One change WatchGateways reports: a status change, a config answer, a removal, or a listing entry."""

    gateway: GatewayView
    change_time: datetime
    previous_status: GatewayStatus | None = None
    deleted: bool = False


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def state_row(record: GatewayRecord, replica: str) -> dict[str, Any]:
    """The flush parameters for one gateway (see store.flush_states)."""
    state = record.state
    return {
        "heartbeat_replica": replica,
        "environment_id": record.environment_id,
        "gateway_id": record.gateway_id,
        "register_time": record.register_time,
        "last_seen_time": record.last_seen,
        "connected_since": state.connected_since,
        "agent_version": state.agent_version,
        "gateway_version": state.gateway_version,
        "applied_config_version": state.applied_config_version,
        "nacked_config_version": state.nacked_config_version,
        "config_error": state.config_error,
        "spool_depth": state.spool_depth,
        # -1 keeps "spool empty" (unset) apart from "oldest event is 0 ms old".
        "oldest_unsent_age_ms": -1 if state.oldest_unsent_age is None else _ms(state.oldest_unsent_age),
        "dead_letter_count": state.dead_letter_count,
        "dropped_event_count": state.dropped_event_count,
        "heartbeat_interval_ms": _ms(record.interval),
        "budget_snapshot_time": state.budget_snapshot_time,
        "budget_enforcement": enforcement_json(state.budget_enforcement),
    }


def enforcement_json(enforcement: tuple[BudgetEnforcement, ...]) -> str:
    """The stored form: {budget_id: [denied, shadow_denied]} ('' for none)."""
    if not enforcement:
        return ""
    return json.dumps(
        {e.budget_id: [e.denied_requests, e.shadow_denied_requests] for e in enforcement}, separators=(",", ":")
    )


def enforcement_from_json(text: str) -> tuple[BudgetEnforcement, ...]:
    if not text:
        return ()
    counts = json.loads(text)
    return tuple(
        BudgetEnforcement(budget_id, int(denied), int(shadow)) for budget_id, (denied, shadow) in counts.items()
    )


def state_from_row(row: Any) -> AgentState:
    """The AgentState a flushed row holds (the inverse of state_row)."""
    unsent = row.oldest_unsent_age_ms >= 0 and row.last_seen_time is not None
    return AgentState(
        agent_version=row.agent_version,
        gateway_version=row.gateway_version,
        applied_config_version=row.applied_config_version,
        nacked_config_version=row.nacked_config_version,
        config_error=row.config_error,
        spool_depth=row.spool_depth,
        oldest_unsent_age=timedelta(milliseconds=row.oldest_unsent_age_ms) if unsent else None,
        dead_letter_count=row.dead_letter_count,
        dropped_event_count=row.dropped_event_count,
        connected_since=row.connected_since,
        budget_snapshot_time=row.budget_snapshot_time,
        budget_enforcement=enforcement_from_json(row.budget_enforcement),
    )


def interval_from_row(row: Any, default: timedelta) -> timedelta:
    return timedelta(milliseconds=row.heartbeat_interval_ms) if row.heartbeat_interval_ms > 0 else default
