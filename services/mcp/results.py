"""Replies of the control plane as small JSON records for a model: money in its currency with the micro-units,
durations in milliseconds, times in ISO 8601, enum values as lower-case words, unknown as null (never 0)."""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.usage_terms.figures import DURATION_METRICS, MONEY_METRICS, money, no_tokens_reported

Record = dict[str, Any]

NOT_REPORTED: Final = None
"""A figure nobody reported: null in a record, so the model cannot mistake it for 0."""


def money_record(micros: int, currency: str) -> Record:
    """Money both ways: readable in its currency, and exact in integer micro-units (1 unit = 1,000,000)."""
    return {"amount": money(micros, currency), "micros": micros, "currency": currency or None}


def moment(stamp: Timestamp) -> str | None:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime().isoformat() + "Z"


def milliseconds(span: Duration) -> float:
    return round(span.ToNanoseconds() / 1e6, 3)


def enum_word(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def metric_name(value: int) -> str:
    return enum_word(pb.Metric, value, "METRIC_").replace("_", "-")


def _latency(stats: pb.LatencyStats) -> Record | None:
    if stats.count == 0:
        return NOT_REPORTED
    return {
        "average_ms": milliseconds(stats.average),
        "p50_ms": milliseconds(stats.p50),
        "p95_ms": milliseconds(stats.p95),
        "p99_ms": milliseconds(stats.p99),
        "count": stats.count,
    }


def summary_record(figures: pb.UsageSummary) -> Record:
    tokens = figures.tokens
    token_sums = (
        NOT_REPORTED
        if no_tokens_reported(figures)
        else {
            "input": tokens.input,
            "output": tokens.output,
            "cache_read": tokens.cache_read,
            "cache_write": tokens.cache_write,
            "reasoning": tokens.reasoning,
            "total": tokens.total,
        }
    )
    all_unpriced = figures.attempts > 0 and figures.unpriced_count >= figures.attempts
    return {
        "requests": figures.requests,
        "attempts": figures.attempts,
        "successes": figures.successes,
        "errors": figures.errors,
        "success_rate": round(figures.success_rate, 6),
        "tokens": token_sums,
        "cost": NOT_REPORTED if all_unpriced else money_record(figures.cost_micros, figures.currency),
        "cache_savings": money_record(figures.cache_savings_micros, figures.currency),
        "latency": _latency(figures.latency),
        "time_to_first_token": _latency(figures.ttft),
        "events_without_token_counts": figures.unknown_tokens_count,
        "events_without_cost": figures.unpriced_count,
    }


def metric_value(which: int, value: pb.MetricValue, currency: str) -> Any:
    number: float = value.int_value if value.WhichOneof("value") == "int_value" else value.double_value
    if which in MONEY_METRICS:
        return money_record(int(number), currency)
    if which in DURATION_METRICS:
        return round(number, 3)
    return number


def request_record(found: pb.RequestSummary, currency: str) -> Record:
    return {
        "environment": found.environment_id,
        "gateway": found.gateway_id,
        "request_id": found.request_id,
        "start_time": moment(found.start_time),
        "requested_model": found.requested_model,
        "resolved_model": found.resolved_model,
        "provider": found.provider,
        "attempts": found.attempt_count,
        "status_code": found.status_code if found.HasField("status_code") else NOT_REPORTED,
        "error_type": found.error_type or None,
        "total_tokens": found.tokens.total,
        "cost": money_record(found.cost_micros, currency) if found.HasField("cost_micros") else NOT_REPORTED,
        "latency_ms": milliseconds(found.latency),
        "streaming": found.streaming,
        "api_key": found.api_key_id or None,
        "user": found.user_id or None,
    }


def attempt_record(stored: pb.StoredUsageEvent, currency: str) -> Record:
    event = stored.event
    counts = event.tokens
    return {
        "attempt": event.attempt,
        "event_time": moment(event.event_time),
        "resolved_model": event.resolved_model,
        "provider": event.provider,
        "status_code": event.status_code if event.HasField("status_code") else NOT_REPORTED,
        "error_type": event.error_type or None,
        "error_message": event.error_message or None,
        "tokens": {
            name: getattr(counts, name) if counts.HasField(name) else NOT_REPORTED
            for name in ("input", "output", "cache_read", "cache_write", "reasoning")
        },
        "cost": money_record(event.cost_micros, currency) if event.HasField("cost_micros") else NOT_REPORTED,
        "cost_source": enum_word(pb.CostSource, stored.cost_source, "COST_SOURCE_"),
        "latency_ms": milliseconds(event.latency) if event.HasField("latency") else NOT_REPORTED,
        "tags": dict(event.tags),
    }


def gateway_record(gateway: heartbeat_pb.Gateway) -> Record:
    state = gateway.state
    return {
        "environment": gateway.environment_id,
        "gateway": gateway.gateway_id,
        "status": enum_word(heartbeat_pb.GatewayStatus, gateway.status, "GATEWAY_STATUS_"),
        "why": list(gateway.status_reasons),
        "last_seen_time": moment(gateway.last_seen_time),
        "agent_version": state.agent_version or None,
        "applied_config_version": state.applied_config_version,
        "desired_config_version": gateway.desired_config_version,
        "config_error": state.config_error or None,
        "spool_depth": state.spool_depth,
        "oldest_unsent_age_ms": milliseconds(state.oldest_unsent_age),
        "dead_letters": state.dead_letter_count,
        "dropped_events": state.dropped_event_count,
    }


def _amount(metric: int, value: int, currency: str) -> Any:
    return money_record(value, currency) if metric == budget_pb.METRIC_SPEND else value


def budget_record(budget: budget_pb.Budget, status: budget_pb.WindowStatus) -> Record:
    scope: Record = {
        name: value
        for name, value in (
            ("environment", budget.scope.environment_id),
            ("gateway", budget.scope.gateway_id),
            ("api_key", budget.scope.api_key_id),
            ("user", budget.scope.user_id),
            ("requested_model", budget.scope.requested_model),
            ("resolved_model", budget.scope.resolved_model),
            ("provider", budget.scope.provider),
            ("route", budget.scope.route),
        )
        if value
    }
    if budget.scope.tags:
        scope["tags"] = dict(budget.scope.tags)
    currency = budget.currency
    return {
        "budget_id": budget.budget_id,
        "name": budget.display_name,
        "scope": scope or {"organization": True},
        "metric": enum_word(budget_pb.Metric, budget.metric, "METRIC_"),
        "period": enum_word(budget_pb.Period, budget.period, "PERIOD_"),
        "time_zone": budget.time_zone,
        "mode": enum_word(budget_pb.Mode, budget.mode, "MODE_"),
        "alert_threshold_percents": list(budget.alert_threshold_percents),
        "current_window": {
            "start_time": moment(status.window_start_time),
            "end_time": moment(status.window_end_time),
            "used": _amount(budget.metric, status.used, currency),
            "limit": _amount(budget.metric, status.limit, currency),
            "remaining": _amount(budget.metric, status.remaining, currency),
            "state": enum_word(budget_pb.BudgetState, status.state, "BUDGET_STATE_"),
            "crossed_threshold_percent": status.crossed_threshold_percent,
        },
    }


def alert_record(alert: budget_pb.Alert, budget: budget_pb.Budget) -> Record:
    return {
        "alert_id": alert.alert_id,
        "budget_id": alert.budget_id,
        "budget_name": alert.display_name,
        "environment": alert.environment_id or None,
        "window_start_time": moment(alert.window_start_time),
        "threshold_percent": alert.threshold_percent,
        "metric": enum_word(budget_pb.Metric, budget.metric, "METRIC_"),
        "used": _amount(budget.metric, alert.used, budget.currency),
        "limit": _amount(budget.metric, alert.limit, budget.currency),
        "mode": enum_word(budget_pb.Mode, alert.mode, "MODE_"),
        "create_time": moment(alert.create_time),
    }
