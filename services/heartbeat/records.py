"""One gateway's in-memory heartbeat state, and its conversions to database rows and to protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from services.errors import InvalidArgumentError
from services.heartbeat.status import Status
from services.timestamps import to_timestamp
from services.validation import require_text

GatewayName = tuple[str, str]
"""(environment_id, gateway_id)."""


@dataclass(slots=True)
class GatewayRecord:
    """Mutable on purpose: the heartbeat hot path updates it in place, one dict lookup per ping."""

    environment_id: str
    gateway_id: str
    register_time: datetime | None
    last_seen: datetime | None
    state: pb.AgentState
    interval: timedelta
    status: Status = pb.GATEWAY_STATUS_UNSPECIFIED
    reasons: tuple[str, ...] = ()
    recheck_at: float = 0.0
    """Epoch seconds when the status must be derived again with no traffic (see derive_status)."""

    @property
    def name(self) -> GatewayName:
        return (self.environment_id, self.gateway_id)


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
        "connected_since": state.connected_since.ToDatetime(tzinfo=UTC) if state.HasField("connected_since") else None,
        "agent_version": state.agent_version,
        "gateway_version": state.gateway_version,
        "applied_config_version": state.applied_config_version,
        "nacked_config_version": state.nacked_config_version,
        "config_error": state.config_error,
        "spool_depth": state.spool_depth,
        # -1 keeps "spool empty" (unset) apart from "oldest event is 0 ms old".
        "oldest_unsent_age_ms": _ms(state.oldest_unsent_age.ToTimedelta())
        if state.HasField("oldest_unsent_age")
        else -1,
        "dead_letter_count": state.dead_letter_count,
        "dropped_event_count": state.dropped_event_count,
        "heartbeat_interval_ms": _ms(record.interval),
    }


def state_from_row(row: Any) -> pb.AgentState:
    """The AgentState a flushed row holds (the inverse of state_row)."""
    state = pb.AgentState(
        agent_version=row.agent_version,
        gateway_version=row.gateway_version,
        applied_config_version=row.applied_config_version,
        nacked_config_version=row.nacked_config_version,
        config_error=row.config_error,
        spool_depth=row.spool_depth,
        dead_letter_count=row.dead_letter_count,
        dropped_event_count=row.dropped_event_count,
    )
    if row.oldest_unsent_age_ms >= 0 and row.last_seen_time is not None:
        state.oldest_unsent_age.FromMilliseconds(row.oldest_unsent_age_ms)
    if row.connected_since is not None:
        state.connected_since.CopyFrom(to_timestamp(row.connected_since))
    return state


def interval_from_row(row: Any, default: timedelta) -> timedelta:
    return timedelta(milliseconds=row.heartbeat_interval_ms) if row.heartbeat_interval_ms > 0 else default


def to_gateway(record: GatewayRecord, *, desired_config_version: int) -> pb.Gateway:
    gateway = pb.Gateway(
        environment_id=record.environment_id,
        gateway_id=record.gateway_id,
        status=record.status,
        status_reasons=record.reasons,
        state=record.state,
        desired_config_version=desired_config_version,
    )
    gateway.heartbeat_interval.FromTimedelta(record.interval)
    if record.last_seen is not None:
        gateway.last_seen_time.CopyFrom(to_timestamp(record.last_seen))
    if record.register_time is not None:
        gateway.register_time.CopyFrom(to_timestamp(record.register_time))
    return gateway


_MAX_VERSION_BYTES = 256
_MAX_CONFIG_ERROR_BYTES = 4096


def check_agent_state(state: pb.AgentState) -> None:
    """Bounds what an agent may report, so one bad agent cannot bloat the fleet table or the database."""
    require_text(state.agent_version, field="state.agent_version", max_bytes=_MAX_VERSION_BYTES)
    require_text(state.gateway_version, field="state.gateway_version", max_bytes=_MAX_VERSION_BYTES)
    require_text(state.config_error, field="state.config_error", max_bytes=_MAX_CONFIG_ERROR_BYTES)
    for name in (
        "applied_config_version",
        "nacked_config_version",
        "spool_depth",
        "dead_letter_count",
        "dropped_event_count",
        "spool_bytes",
    ):
        if getattr(state, name) < 0:
            raise InvalidArgumentError(f"state.{name}", f"must not be negative (got {getattr(state, name)})")
    if state.HasField("oldest_unsent_age") and state.oldest_unsent_age.ToNanoseconds() < 0:
        raise InvalidArgumentError("state.oldest_unsent_age", "must not be negative")
