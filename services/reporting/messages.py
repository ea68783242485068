"""Request history records as ReportingService messages (the servicer's translation, kept out of the domain)."""

from __future__ import annotations

import json
from typing import Final

from google.protobuf.duration_pb2 import Duration

from meterwire.common.v1 import usage_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.accounting.measures import TOKEN_KINDS, CostSource
from services.reporting.aggregate import parse_categories
from services.reporting.history import RequestOutcome, StoredEvent

_TOKEN_FIELDS: Final = tuple((kind.removesuffix("_tokens"), kind) for kind in TOKEN_KINDS)
"""(TokenCounts field, usage_events column) per token kind."""
_DURATIONS: Final = (("latency", "latency_us"), ("gateway_latency", "gateway_latency_us"), ("ttft", "ttft_us"))


def _duration_us(value_us: int) -> Duration:
    return Duration(seconds=value_us // 1_000_000, nanos=value_us % 1_000_000 * 1000)


def stored_event_message(stored: StoredEvent) -> pb.StoredUsageEvent:
    """A stored event as the event the gateway sent, with what the server added."""
    m = stored.values
    event = usage_pb2.UsageEvent(
        event_id=m["event_id"],
        request_id=m["request_id"],
        attempt=m["attempt"],
        api_key_id=m["api_key_id"],
        user_id=m["user_id"],
        tags=json.loads(m["tags"]) if m["tags"] else {},
        route=m["route"],
        request_type=m["request_type"],
        requested_model=m["requested_model"],
        resolved_model=m["resolved_model"],
        provider=m["provider"],
        credential_type=m["credential_type"],
        streaming=bool(m["streaming"]),
        error_type=m["error_type"],
        error_message=m["error_message"],
        sequence=m["sequence"],
    )
    event.event_time.FromMicroseconds(m["event_time_us"])
    if m["status_code"] is not None:
        event.status_code = m["status_code"]
    for field, column in _DURATIONS:
        if m[column] is not None:
            getattr(event, field).CopyFrom(_duration_us(m[column]))
    categories = parse_categories(m["token_categories"])
    if categories or any(m[column] is not None for _, column in _TOKEN_FIELDS):
        event.tokens.SetInParent()
        for field, column in _TOKEN_FIELDS:
            if m[column] is not None:
                setattr(event.tokens, field, m[column])
        event.tokens.categories.update(categories)
    if m["cost_micros"] is not None:
        event.cost_micros = m["cost_micros"]
    if m["cache_savings_micros"] is not None:
        event.cache_savings_micros = m["cache_savings_micros"]
    message = pb.StoredUsageEvent(
        environment_id=m["environment_id"],
        gateway_id=stored.gateway_id,
        event=event,
        cost_source=CostSource.proto_of_stored(m["cost_source"]),
    )
    message.ingest_time.FromMicroseconds(m["ingest_time_us"])
    return message


def request_message(outcome: RequestOutcome) -> pb.RequestSummary:
    summary = pb.RequestSummary(
        environment_id=outcome.environment_id,
        gateway_id=outcome.gateway_id,
        request_id=outcome.request_id,
        requested_model=outcome.requested_model,
        resolved_model=outcome.resolved_model,
        provider=outcome.provider,
        attempt_count=outcome.attempt_count,
        error_type=outcome.error_type,
        streaming=outcome.streaming,
        api_key_id=outcome.api_key_id,
        user_id=outcome.user_id,
    )
    summary.start_time.FromMicroseconds(outcome.start_time_us)
    if outcome.status_code is not None:
        summary.status_code = outcome.status_code
    if outcome.cost_micros is not None:
        summary.cost_micros = outcome.cost_micros
    if outcome.latency_us is not None:
        summary.latency.CopyFrom(_duration_us(outcome.latency_us))
    if outcome.tokens is not None or outcome.categories:
        # Unset when no attempt reported tokens: unknown is not 0.
        tokens = summary.tokens
        for field, column in _TOKEN_FIELDS:
            setattr(tokens, field, (outcome.tokens or {}).get(column, 0))
        tokens.categories.update(outcome.categories)
        tokens.total = sum((outcome.tokens or {}).values())
    return summary
