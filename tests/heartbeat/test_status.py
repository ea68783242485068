"""derive_status: thresholds in intervals, precedence, reasons and the next time to look again."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from services.heartbeat.status import StatusThresholds, derive_status

SEEN = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
THRESHOLDS = StatusThresholds(stale_intervals=2, offline_intervals=6, degraded_backlog=timedelta(minutes=5))
INTERVAL = timedelta(seconds=10)


def _status(after: timedelta, state: pb.AgentState | None = None, interval: timedelta = INTERVAL) -> int:
    verdict = derive_status(SEEN, state or pb.AgentState(), interval=interval, now=SEEN + after, thresholds=THRESHOLDS)
    return verdict.status


def test_thresholds_are_counted_in_the_gateways_own_interval() -> None:
    assert _status(timedelta(seconds=20)) == pb.GATEWAY_STATUS_HEALTHY
    assert _status(timedelta(seconds=21)) == pb.GATEWAY_STATUS_STALE
    assert _status(timedelta(seconds=60)) == pb.GATEWAY_STATUS_STALE
    assert _status(timedelta(seconds=61)) == pb.GATEWAY_STATUS_OFFLINE
    assert _status(timedelta(seconds=61), interval=timedelta(seconds=30)) == pb.GATEWAY_STATUS_STALE


def test_silence_outranks_a_degraded_report() -> None:
    troubled = pb.AgentState(dead_letter_count=5)
    assert _status(timedelta(0), troubled) == pb.GATEWAY_STATUS_DEGRADED
    assert _status(timedelta(seconds=30), troubled) == pb.GATEWAY_STATUS_STALE


def test_a_backlog_is_degraded_only_past_its_threshold() -> None:
    assert _status(timedelta(0), pb.AgentState(oldest_unsent_age=Duration(seconds=300))) == pb.GATEWAY_STATUS_HEALTHY
    assert _status(timedelta(0), pb.AgentState(oldest_unsent_age=Duration(seconds=301))) == pb.GATEWAY_STATUS_DEGRADED


def test_a_nack_older_than_the_applied_version_is_history_not_trouble() -> None:
    old_nack = pb.AgentState(applied_config_version=5, nacked_config_version=4, config_error="bad")
    new_nack = pb.AgentState(applied_config_version=5, nacked_config_version=6, config_error="bad alias")
    assert _status(timedelta(0), old_nack) == pb.GATEWAY_STATUS_HEALTHY
    verdict = derive_status(SEEN, new_nack, interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS)
    assert (verdict.status, verdict.reasons) == (pb.GATEWAY_STATUS_DEGRADED, ("config version 6 rejected: bad alias",))


def test_the_verdict_says_when_to_look_again() -> None:
    healthy = derive_status(SEEN, pb.AgentState(), interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS)
    stale = derive_status(
        SEEN, pb.AgentState(), interval=INTERVAL, now=SEEN + timedelta(seconds=30), thresholds=THRESHOLDS
    )
    offline = derive_status(
        SEEN, pb.AgentState(), interval=INTERVAL, now=SEEN + timedelta(hours=1), thresholds=THRESHOLDS
    )
    assert healthy.recheck_at == (SEEN + timedelta(seconds=20)).timestamp()
    assert stale.recheck_at == (SEEN + timedelta(seconds=60)).timestamp()
    assert offline.recheck_at == math.inf


def test_a_gateway_never_seen_is_never_seen() -> None:
    verdict = derive_status(None, pb.AgentState(), interval=INTERVAL, now=SEEN, thresholds=THRESHOLDS)
    assert verdict.status == pb.GATEWAY_STATUS_NEVER_SEEN
