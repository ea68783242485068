"""Request history from raw events: requests newest first, one request's attempts, and raw event export."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.common.v1 import usage_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.accounting.measures import ERROR_STATUS_CLASSES, CostSource
from services.errors import InvalidArgumentError, NotFoundError
from services.pagination import decode_page_token, encode_page_token, page_size
from services.reporting.aggregate import KeyNames, parse_categories
from services.reporting.filters import UsageSelection, usage_conditions
from services.storage import tables

EXPORT_EVENTS_PER_MESSAGE: Final = 500
"""Raw events per ExportUsage message; one keyset page of the database is read per message."""

_events = tables.usage_events
_TOKEN_FIELDS: Final = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)


def _duration_us(value_us: int) -> Duration:
    return Duration(seconds=value_us // 1_000_000, nanos=value_us % 1_000_000 * 1000)


def stored_event(row: Row[Any], names: KeyNames) -> pb.StoredUsageEvent:
    """A usage_events row as the event the gateway sent, with what the server added."""
    m = row._mapping
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
    for field, column in (("latency", "latency_us"), ("gateway_latency", "gateway_latency_us"), ("ttft", "ttft_us")):
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
    stored = pb.StoredUsageEvent(
        environment_id=m["environment_id"],
        gateway_id=names.gateway_id(m["gateway_key"]),
        event=event,
        cost_source=CostSource.proto_of_stored(m["cost_source"]),
    )
    stored.ingest_time.FromMicroseconds(m["ingest_time_us"])
    return stored


def request_summary(attempts: Sequence[pb.StoredUsageEvent]) -> pb.RequestSummary:
    """A request's attempts (in attempt order) folded into the outcome its caller saw."""
    first, last = attempts[0], attempts[-1]
    summary = pb.RequestSummary(
        environment_id=first.environment_id,
        gateway_id=last.gateway_id,
        request_id=first.event.request_id,
        requested_model=first.event.requested_model,
        resolved_model=last.event.resolved_model,
        provider=last.event.provider,
        attempt_count=len(attempts),
        error_type=last.event.error_type,
        streaming=last.event.streaming,
        api_key_id=first.event.api_key_id,
        user_id=first.event.user_id,
    )
    summary.start_time.CopyFrom(first.event.event_time)
    if last.event.HasField("status_code"):
        summary.status_code = last.event.status_code
    tokens = summary.tokens
    costs = [stored.event.cost_micros for stored in attempts if stored.event.HasField("cost_micros")]
    if costs:
        # The known part; attempts of unknown cost (typically failures) count in the summaries' unpriced_count.
        summary.cost_micros = sum(costs)
    latency_us = [stored.event.latency.ToMicroseconds() for stored in attempts if stored.event.HasField("latency")]
    if latency_us:
        summary.latency.CopyFrom(_duration_us(sum(latency_us)))
    for stored in attempts:
        counts = stored.event.tokens
        for field, _ in _TOKEN_FIELDS:
            setattr(tokens, field, getattr(tokens, field) + getattr(counts, field))
        for category, value in counts.categories.items():
            tokens.categories[category] = tokens.categories.get(category, 0) + value
    tokens.total = tokens.input + tokens.output + tokens.cache_read + tokens.cache_write + tokens.reasoning
    return summary


def _last_attempt_failed() -> sa.ColumnElement[bool]:
    """The request of the outer usage_events row ended with an error: its highest attempt has a 4xx/5xx."""
    last = tables.usage_events.alias("last_attempt")
    later = tables.usage_events.alias("later_attempt")
    no_later = ~sa.exists().where(
        later.c.environment_id == last.c.environment_id,
        later.c.request_id == last.c.request_id,
        later.c.attempt > last.c.attempt,
    )
    return sa.exists().where(
        last.c.environment_id == _events.c.environment_id,
        last.c.request_id == _events.c.request_id,
        last.c.status_class.in_(ERROR_STATUS_CLASSES),
        no_later,
    )


class RequestHistory:
    """Reads requests and their attempts from raw events (kept for raw_event_retention)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list_requests(
        self, selection: UsageSelection, *, errors_only: bool, size: int, token: str
    ) -> pb.ListRequestsResponse:
        """Requests whose FIRST attempt matches the selection, newest first; keyset-paginated."""
        limit = page_size(size)
        position = decode_page_token(token)
        conditions = [*usage_conditions(_events, selection, [(selection.start_us, selection.end_us)])]
        conditions.append(_events.c.attempt == 1)
        if errors_only:
            conditions.append(_last_attempt_failed())
        if position is not None:
            time_us, key = position.get("t"), position.get("k")
            if not isinstance(time_us, int) or not isinstance(key, int):
                raise InvalidArgumentError("page_token", "is not a token this server issued")
            conditions.append(
                sa.or_(
                    _events.c.event_time_us < time_us,
                    sa.and_(_events.c.event_time_us == time_us, _events.c.event_key < key),
                )
            )
        query = (
            sa.select(_events.c.environment_id, _events.c.request_id, _events.c.event_time_us, _events.c.event_key)
            .where(*conditions)
            .order_by(_events.c.event_time_us.desc(), _events.c.event_key.desc())
            .limit(limit + 1)
        )
        async with self._engine.connect() as connection:
            firsts = (await connection.execute(query)).all()
            page = firsts[:limit]
            names = await KeyNames.load(connection)
            attempts: dict[tuple[str, str], list[pb.StoredUsageEvent]] = {}
            if page:
                wanted = sa.tuple_(_events.c.environment_id, _events.c.request_id).in_(
                    [(row.environment_id, row.request_id) for row in page]
                )
                rows = await connection.execute(
                    sa.select(_events)
                    .where(wanted)
                    .order_by(_events.c.attempt, _events.c.event_time_us, _events.c.event_key)
                )
                for row in rows:
                    attempts.setdefault((row.environment_id, row.request_id), []).append(stored_event(row, names))
        response = pb.ListRequestsResponse(
            requests=[request_summary(attempts[(row.environment_id, row.request_id)]) for row in page]
        )
        if len(firsts) > limit:
            last = page[-1]
            response.next_page_token = encode_page_token({"t": last.event_time_us, "k": last.event_key})
        return response

    async def get_request(self, environment_id: str, request_id: str) -> pb.GetRequestResponse:
        if not environment_id:
            raise InvalidArgumentError("environment_id", "is required")
        if not request_id:
            raise InvalidArgumentError("request_id", "is required")
        query = (
            sa.select(_events)
            .where(_events.c.environment_id == environment_id, _events.c.request_id == request_id)
            .order_by(_events.c.attempt, _events.c.event_time_us, _events.c.event_key)
        )
        async with self._engine.connect() as connection:
            names = await KeyNames.load(connection)
            attempts = [stored_event(row, names) for row in await connection.execute(query)]
        if not attempts:
            raise NotFoundError(f"request {request_id!r} has no stored attempts in environment {environment_id!r}")
        return pb.GetRequestResponse(request=request_summary(attempts), attempts=attempts)

    async def export_events(self, selection: UsageSelection) -> AsyncIterator[list[pb.StoredUsageEvent]]:
        """Every selected event, oldest first, a page at a time: memory stays bounded however many there are."""
        after: tuple[int, int] | None = None
        async with self._engine.connect() as connection:
            names = await KeyNames.load(connection)
        base = usage_conditions(_events, selection, [(selection.start_us, selection.end_us)])
        while True:
            conditions = list(base)
            if after is not None:
                conditions.append(
                    sa.or_(
                        _events.c.event_time_us > after[0],
                        sa.and_(_events.c.event_time_us == after[0], _events.c.event_key > after[1]),
                    )
                )
            query = (
                sa.select(_events)
                .where(*conditions)
                .order_by(_events.c.event_time_us, _events.c.event_key)
                .limit(EXPORT_EVENTS_PER_MESSAGE)
            )
            # A short connection per page: a slow reader of the stream never holds a database snapshot open.
            async with self._engine.connect() as connection:
                rows = (await connection.execute(query)).all()
            if not rows:
                return
            yield [stored_event(row, names) for row in rows]
            if len(rows) < EXPORT_EVENTS_PER_MESSAGE:
                return
            after = (rows[-1].event_time_us, rows[-1].event_key)
