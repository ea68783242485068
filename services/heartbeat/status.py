"""Gateway status derivation: the one function that turns a last heartbeat into HEALTHY, STALE, OFFLINE, ..."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.heartbeat.records import AgentState, GatewayStatus
from services.settings import ServerSettings


@dataclass(frozen=True, slots=True)
class StatusThresholds:
    """When a gateway's status changes, in heartbeat intervals (so each gateway is judged by its own interval)."""

    stale_intervals: float
    """Silent for more than this many intervals: STALE."""
    offline_intervals: float
    """Silent for more than this many intervals: OFFLINE."""
    degraded_backlog: timedelta
    """An oldest unsent usage event older than this: DEGRADED."""
    budget_stale_intervals: float = 3.0
    """A budget snapshot the agent enforces from older than this many intervals: DEGRADED."""

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> StatusThresholds:
        return cls(
            stale_intervals=settings.heartbeat_stale_intervals,
            offline_intervals=settings.heartbeat_offline_intervals,
            degraded_backlog=settings.heartbeat_degraded_backlog,
            budget_stale_intervals=settings.heartbeat_budget_stale_intervals,
        )


@dataclass(frozen=True, slots=True)
class StatusVerdict:
    status: GatewayStatus
    reasons: tuple[str, ...]
    """Why the status is not HEALTHY, for people; worded without fast-moving numbers where a status lasts."""
    recheck_at: float
    """Epoch seconds when the status changes with no new heartbeat (the next threshold); inf: never."""


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _clock_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def derive_status(
    last_seen: datetime | None,
    state: AgentState,
    *,
    interval: timedelta,
    now: datetime,
    thresholds: StatusThresholds,
    registered: datetime | None = None,
) -> StatusVerdict:
    """The status of a gateway whose latest heartbeat arrived at `last_seen` (None: never) reporting `state`.

    A gateway that made contact without a heartbeat (usage or WatchConfig only; `registered` is its first
    contact) is judged by its silence since then: it is not NEVER_SEEN, which means no contact at all.
    Precedence: NEVER_SEEN, then OFFLINE, STALE (silence says more than the last report), then DEGRADED.
    """
    contact = last_seen or registered
    if contact is None:
        return StatusVerdict(GatewayStatus.NEVER_SEEN, ("no heartbeat received yet",), math.inf)
    since = (
        f"no heartbeat since {_clock_time(contact)}"
        if last_seen is not None
        else f"no heartbeat ever (first contact, without one, at {_clock_time(contact)})"
    )
    stale_after = interval * thresholds.stale_intervals
    offline_after = interval * thresholds.offline_intervals
    silence = now - contact
    if silence > offline_after:
        return StatusVerdict(GatewayStatus.OFFLINE, (f"{since} (offline after {_span(offline_after)})",), math.inf)
    offline_at = (contact + offline_after).timestamp()
    if silence > stale_after:
        return StatusVerdict(GatewayStatus.STALE, (f"{since} (stale after {_span(stale_after)})",), offline_at)
    stale_at = (contact + stale_after).timestamp()
    reasons: list[str] = []
    if state.nacked_config_version > state.applied_config_version:
        error = state.config_error or "no reason given"
        reasons.append(f"config version {state.nacked_config_version} rejected: {error}")
    backlog = state.oldest_unsent_age
    if backlog is not None and backlog > thresholds.degraded_backlog:
        reasons.append(
            f"usage backlog: oldest unsent event is {_span(backlog)} old "
            f"(limit {_span(thresholds.degraded_backlog)}, {state.spool_depth} events waiting)"
        )
    if state.dead_letter_count > 0:
        reasons.append(f"{state.dead_letter_count} usage events rejected by the control plane (dead letters)")
    if state.dropped_event_count > 0:
        reasons.append(f"{state.dropped_event_count} usage events dropped by the agent (spool or disk full)")
    recheck_at = stale_at
    snapshot = state.budget_snapshot_time
    if snapshot is not None:
        # Alive, but deciding budgets from what the control plane said long ago (its snapshot stream is down):
        # hard-stop budgets may be overspent up to its leases, so operators should find it.
        budget_stale_after = interval * thresholds.budget_stale_intervals
        age = now - snapshot
        if age > budget_stale_after:
            reasons.append(
                f"enforcing budgets from state {_span(timedelta(seconds=int(age.total_seconds())))} old "
                f"(limit {_span(budget_stale_after)})"
            )
        else:
            recheck_at = min(stale_at, (snapshot + budget_stale_after).timestamp())
    if reasons:
        return StatusVerdict(GatewayStatus.DEGRADED, tuple(reasons), recheck_at)
    return StatusVerdict(GatewayStatus.HEALTHY, (), recheck_at)
