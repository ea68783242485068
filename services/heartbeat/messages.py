"""The heartbeat service's edge: protobuf messages to the fleet's plain values and back, every field that
arrives from an agent or operator range-checked on the way in (INVALID_ARGUMENT naming the field)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import timedelta
from typing import Final

from google.protobuf.duration_pb2 import Duration

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from services.errors import InvalidArgumentError
from services.heartbeat.records import AgentState, BudgetEnforcement, GatewayChange, GatewayStatus, GatewayView
from services.timestamps import to_timestamp
from services.validation import require_duration, require_int, require_text, require_timestamp

MAX_VERSION_BYTES: Final = 256
MAX_CONFIG_ERROR_BYTES: Final = 4096
MAX_BUDGET_ENFORCEMENT: Final = 100
"""Budgets one heartbeat may report decisions for (AgentState.budget_enforcement)."""
MAX_BUDGET_ID_BYTES: Final = 128
MAX_BACKLOG_AGE: Final = timedelta(days=36525)
"""The oldest an unsent event may be reported: a century, longer than any agent runs, and it fits the column
(milliseconds in 64 bits) and every date computation made with it."""
_COUNTS: Final = (
    "applied_config_version",
    "nacked_config_version",
    "spool_depth",
    "dead_letter_count",
    "dropped_event_count",
    "spool_bytes",
    "last_acked_sequence",
)

_STATUS_TO_PB: Final[dict[GatewayStatus | None, pb.GatewayStatus.ValueType]] = {
    None: pb.GATEWAY_STATUS_UNSPECIFIED,
    GatewayStatus.HEALTHY: pb.GATEWAY_STATUS_HEALTHY,
    GatewayStatus.STALE: pb.GATEWAY_STATUS_STALE,
    GatewayStatus.OFFLINE: pb.GATEWAY_STATUS_OFFLINE,
    GatewayStatus.DEGRADED: pb.GATEWAY_STATUS_DEGRADED,
    GatewayStatus.NEVER_SEEN: pb.GATEWAY_STATUS_NEVER_SEEN,
}
_STATUS_FROM_PB: Final = {value: status for status, value in _STATUS_TO_PB.items() if status is not None}


def status_to_pb(status: GatewayStatus | None) -> pb.GatewayStatus.ValueType:
    return _STATUS_TO_PB[status]


def statuses_from_pb(values: Iterable[int], *, field: str = "statuses") -> frozenset[GatewayStatus]:
    wanted: set[GatewayStatus] = set()
    for index, value in enumerate(values):
        status = _STATUS_FROM_PB.get(value)  # type: ignore[call-overload]
        if status is None:
            raise InvalidArgumentError(f"{field}[{index}]", f"{value} is not a gateway status")
        wanted.add(status)
    return frozenset(wanted)


def agent_state_from_pb(state: pb.AgentState, *, field: str = "state") -> AgentState:
    """Bounds what an agent may report, so one bad agent can neither bloat the fleet table or the database
    nor hold a value that fails the status check or the batched flush of every other gateway."""
    for name in _COUNTS:
        require_int(getattr(state, name), field=f"{field}.{name}")
    return AgentState(
        agent_version=require_text(state.agent_version, field=f"{field}.agent_version", max_bytes=MAX_VERSION_BYTES),
        gateway_version=require_text(
            state.gateway_version, field=f"{field}.gateway_version", max_bytes=MAX_VERSION_BYTES
        ),
        applied_config_version=state.applied_config_version,
        nacked_config_version=state.nacked_config_version,
        config_error=require_text(state.config_error, field=f"{field}.config_error", max_bytes=MAX_CONFIG_ERROR_BYTES),
        spool_depth=state.spool_depth,
        oldest_unsent_age=require_duration(
            state.oldest_unsent_age, field=f"{field}.oldest_unsent_age", low=timedelta(0), high=MAX_BACKLOG_AGE
        )
        if state.HasField("oldest_unsent_age")
        else None,
        dead_letter_count=state.dead_letter_count,
        dropped_event_count=state.dropped_event_count,
        connected_since=require_timestamp(state.connected_since, field=f"{field}.connected_since")
        if state.HasField("connected_since")
        else None,
        spool_bytes=state.spool_bytes,
        last_acked_sequence=state.last_acked_sequence,
        budget_snapshot_time=require_timestamp(state.budget_snapshot_time, field=f"{field}.budget_snapshot_time")
        if state.HasField("budget_snapshot_time")
        else None,
        budget_enforcement=_enforcement_from_pb(state.budget_enforcement, field=f"{field}.budget_enforcement"),
    )


def _enforcement_from_pb(entries: Iterable[pb.BudgetEnforcement], *, field: str) -> tuple[BudgetEnforcement, ...]:
    entries = list(entries)
    if len(entries) > MAX_BUDGET_ENFORCEMENT:
        raise InvalidArgumentError(field, f"has {len(entries)} entries; at most {MAX_BUDGET_ENFORCEMENT}")
    seen: set[str] = set()
    result = []
    for index, entry in enumerate(entries):
        at = f"{field}[{index}]"
        budget_id = require_text(entry.budget_id, field=f"{at}.budget_id", max_bytes=MAX_BUDGET_ID_BYTES, required=True)
        if budget_id in seen:
            raise InvalidArgumentError(f"{at}.budget_id", f"{budget_id!r} is listed twice")
        seen.add(budget_id)
        result.append(
            BudgetEnforcement(
                budget_id,
                require_int(entry.denied_requests, field=f"{at}.denied_requests"),
                require_int(entry.shadow_denied_requests, field=f"{at}.shadow_denied_requests"),
            )
        )
    return tuple(result)


def agent_state_to_pb(state: AgentState) -> pb.AgentState:
    message = pb.AgentState(
        agent_version=state.agent_version,
        gateway_version=state.gateway_version,
        applied_config_version=state.applied_config_version,
        nacked_config_version=state.nacked_config_version,
        config_error=state.config_error,
        spool_depth=state.spool_depth,
        dead_letter_count=state.dead_letter_count,
        dropped_event_count=state.dropped_event_count,
        spool_bytes=state.spool_bytes,
        last_acked_sequence=state.last_acked_sequence,
    )
    if state.oldest_unsent_age is not None:
        message.oldest_unsent_age.FromTimedelta(state.oldest_unsent_age)
    if state.connected_since is not None:
        message.connected_since.CopyFrom(to_timestamp(state.connected_since))
    if state.budget_snapshot_time is not None:
        message.budget_snapshot_time.CopyFrom(to_timestamp(state.budget_snapshot_time))
    message.budget_enforcement.extend(
        pb.BudgetEnforcement(
            budget_id=e.budget_id, denied_requests=e.denied_requests, shadow_denied_requests=e.shadow_denied_requests
        )
        for e in state.budget_enforcement
    )
    return message


@functools.lru_cache(maxsize=64)
def duration_pb(interval: timedelta) -> Duration:
    """The interval as a Duration, made once per distinct interval (a handful per server); assigning it to a
    message copies it, so the cached message is never changed."""
    duration = Duration()
    duration.FromTimedelta(interval)
    return duration


def gateway_to_pb(view: GatewayView) -> pb.Gateway:
    gateway = pb.Gateway(
        environment_id=view.environment_id,
        gateway_id=view.gateway_id,
        status=status_to_pb(view.status),
        status_reasons=view.reasons,
        state=agent_state_to_pb(view.state),
        desired_config_version=view.desired_config_version,
        heartbeat_interval=duration_pb(view.interval),
    )
    if view.last_seen is not None:
        gateway.last_seen_time.CopyFrom(to_timestamp(view.last_seen))
    if view.register_time is not None:
        gateway.register_time.CopyFrom(to_timestamp(view.register_time))
    return gateway


def change_to_pb(change: GatewayChange) -> pb.WatchGatewaysResponse:
    return pb.WatchGatewaysResponse(
        gateway=gateway_to_pb(change.gateway),
        previous_status=status_to_pb(change.previous_status),
        change_time=to_timestamp(change.change_time),
        deleted=change.deleted,
    )
