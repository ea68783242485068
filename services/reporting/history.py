"""Request history from raw events: requests newest first, one request's attempts, and raw event export."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from services.accounting.measures import ERROR_STATUS_CLASSES, TOKEN_KINDS
from services.errors import InvalidArgumentError, NotFoundError
from services.pagination import decode_page_token, encode_page_token, page_size
from services.reporting.aggregate import KeyNames, parse_categories
from services.reporting.filters import UsageSelection, usage_conditions
from services.storage import tables

EXPORT_EVENTS_PER_MESSAGE: Final = 500
"""Raw events per ExportUsage message; one keyset page of the database is read per message."""

_events = tables.usage_events


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored usage event: its usage_events row by column, and its gateway's id."""

    values: Mapping[str, Any]
    gateway_id: str

    def __getitem__(self, column: str) -> Any:
        return self.values[column]


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """A request's attempts folded into the outcome its caller saw."""

    environment_id: str
    gateway_id: str
    """Of the last attempt."""
    request_id: str
    requested_model: str
    resolved_model: str
    provider: str
    attempt_count: int
    error_type: str
    streaming: bool
    api_key_id: str
    user_id: str
    start_time_us: int
    status_code: int | None
    """The last attempt's (None: not reported)."""
    cost_micros: int | None
    """The known part (None: no attempt's cost is known); attempts of unknown cost, typically failures, count
    in the summaries' unpriced_count."""
    latency_us: int | None
    tokens: dict[str, int] | None
    """Token kind (TOKEN_KINDS) -> the attempts' sum; None when no attempt reported tokens."""
    categories: dict[str, int]


def _stored(row: Row[Any], names: KeyNames) -> StoredEvent:
    return StoredEvent(cast("Mapping[str, Any]", row._mapping), names.gateway_id(row.gateway_key))


def request_outcome(attempts: Sequence[StoredEvent]) -> RequestOutcome:
    """A request's attempts (in attempt order) folded into the outcome its caller saw."""
    first, last = attempts[0], attempts[-1]
    costs = [stored["cost_micros"] for stored in attempts if stored["cost_micros"] is not None]
    latencies = [stored["latency_us"] for stored in attempts if stored["latency_us"] is not None]
    reported = [stored for stored in attempts if any(stored[kind] is not None for kind in TOKEN_KINDS)]
    categories: dict[str, int] = {}
    for stored in attempts:
        for category, value in parse_categories(stored["token_categories"]).items():
            categories[category] = categories.get(category, 0) + value
    return RequestOutcome(
        environment_id=first["environment_id"],
        gateway_id=last.gateway_id,
        request_id=first["request_id"],
        requested_model=first["requested_model"],
        resolved_model=last["resolved_model"],
        provider=last["provider"],
        attempt_count=len(attempts),
        error_type=last["error_type"],
        streaming=bool(last["streaming"]),
        api_key_id=first["api_key_id"],
        user_id=first["user_id"],
        start_time_us=first["event_time_us"],
        status_code=last["status_code"],
        cost_micros=sum(costs) if costs else None,
        latency_us=sum(latencies) if latencies else None,
        tokens={kind: sum(stored[kind] or 0 for stored in reported) for kind in TOKEN_KINDS} if reported else None,
        categories=categories,
    )


@dataclass(frozen=True, slots=True)
class RequestPage:
    requests: list[RequestOutcome]
    next_page_token: str


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
    ) -> RequestPage:
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
            attempts: dict[tuple[str, str], list[StoredEvent]] = {}
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
                    attempts.setdefault((row.environment_id, row.request_id), []).append(_stored(row, names))
        token = ""
        if len(firsts) > limit:
            last = page[-1]
            token = encode_page_token({"t": last.event_time_us, "k": last.event_key})
        return RequestPage([request_outcome(attempts[(row.environment_id, row.request_id)]) for row in page], token)

    async def get_request(self, environment_id: str, request_id: str) -> tuple[RequestOutcome, list[StoredEvent]]:
        """One request's outcome and its attempts in attempt order."""
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
            attempts = [_stored(row, names) for row in await connection.execute(query)]
        if not attempts:
            raise NotFoundError(f"request {request_id!r} has no stored attempts in environment {environment_id!r}")
        return request_outcome(attempts), attempts

    async def export_events(self, selection: UsageSelection) -> AsyncIterator[list[StoredEvent]]:
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
            yield [_stored(row, names) for row in rows]
            if len(rows) < EXPORT_EVENTS_PER_MESSAGE:
                return
            after = (rows[-1].event_time_us, rows[-1].event_key)
