"""derive_status: thresholds in intervals, precedence, reasons and the next time to look again."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from services.heartbeat.records import AgentState, GatewayStatus
from services.heartbeat.status import StatusThresholds, derive_status

SEEN = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
THRESHOLDS = StatusThresholds(stale_intervals=2, offline_intervals=6, degraded_backlog=timedelta(minutes=5))
INTERVAL = timedelta(seconds=10)


def _status(after: timedelta, state: AgentState | None = None, interval: timedelta = INTERVAL) -> GatewayStatus:
    verdict = derive_status(SEEN, state or AgentState(), interval=interval, now=SEEN + after, thresholds=THRESHOLDS)
    return verdict.status


def test_thresholds_are_counted_in_the_gateways_own_interval() -> None:
    assert _status(timedelta(seconds=20)) == GatewayStatus.HEALTHY
    assert _status(timedelta(seconds=21)) == GatewayStatus.STALE
    assert _status(timedelta(seconds=60)) == GatewayStatus.STALE
    assert _status(timedelta(seconds=61)) == GatewayStatus.OFFLINE
    assert _status(timedelta(seconds=61), interval=timedelta(seconds=30)) == GatewayStatus.STALE


def test_silence_outranks_a_degraded_report() -> None:
    troubled = AgentState(dead_letter_count=5)
    assert _status(timedelta(0), troubled) == GatewayStatus.DEGRADED
    assert _status(timedelta(seconds=30), troubled) == GatewayStatus.STALE


def test_a_backlog_is_degraded_only_past_its_threshold() -> None:
    assert _status(timedelta(0), AgentState(oldest_unsent_age=timedelta(seconds=300))) == GatewayStatus.HEALTHY
    assert _status(timedelta(0), AgentState(oldest_unsent_age=timedelta(seconds=301))) == GatewayStatus.DEGRADED


def test_a_nack_older_than_the_applied_version_is_history_not_trouble() -> None:
    old_nack = AgentState(applied_config_version=5, nacked_config_version=4, config_error="bad")
    new_nack = AgentState(applied_config_version=5, nacked_config_version=6, config_error="bad alias")
    assert _status(timedelta(0), old_nack) == GatewayStatus.HEALTHY
    verdict = derive_status(SEEN, new_nack, interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS)
    assert (verdict.status, verdict.reasons) == (GatewayStatus.DEGRADED, ("config version 6 rejected: bad alias",))


def test_the_verdict_says_when_to_look_again() -> None:
    healthy = derive_status(SEEN, AgentState(), interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS)
    stale = derive_status(
        SEEN, AgentState(), interval=INTERVAL, now=SEEN + timedelta(seconds=30), thresholds=THRESHOLDS
    )
    offline = derive_status(SEEN, AgentState(), interval=INTERVAL, now=SEEN + timedelta(hours=1), thresholds=THRESHOLDS)
    assert healthy.recheck_at == (SEEN + timedelta(seconds=20)).timestamp()
    assert stale.recheck_at == (SEEN + timedelta(seconds=60)).timestamp()
    assert offline.recheck_at == math.inf


def test_a_gateway_never_seen_is_never_seen() -> None:
    verdict = derive_status(None, AgentState(), interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS)
    assert verdict.status == GatewayStatus.NEVER_SEEN


def test_a_gateway_that_made_contact_without_heartbeats_is_judged_by_its_silence_since() -> None:
    fresh = derive_status(None, AgentState(), interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS, registered=SEEN)
    later = derive_status(
        None, AgentState(), interval=INTERVAL, now=SEEN + timedelta(minutes=2), thresholds=THRESHOLDS, registered=SEEN
    )
    assert fresh.status == GatewayStatus.HEALTHY
    assert later.status == GatewayStatus.OFFLINE
    assert later.reasons[0].startswith("no heartbeat ever (first contact, without one, at 2026-01-05 12:00:00Z)")
