"""Runs a query plan: sums the rollup metrics per output bucket and group, from rollups and raw events alike."""

from __future__ import annotations

import asyncio
import functools
import json
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from meterwire.common.v1 import usage_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.accounting.bounds import INT64_MAX, INT64_MIN, stored_integer
from services.accounting.compaction import dirty_hours
from services.accounting.measures import COUNT_COLUMNS, StatusClass
from services.accounting.sql import RAW_SUMS
from services.reporting.filters import DIMENSION_COLUMNS, Grouping, UsageSelection, usage_conditions
from services.reporting.planner import MINUTE_US, BucketGrid, QueryPlan, Source, coarse_rollups, plan_sources
from services.storage import dialect, tables

SUM_COLUMNS: Final = tables.ROLLUP_SUM_COLUMNS
SUM_INDEX: Final = {name: index for index, name in enumerate(SUM_COLUMNS)}

Sums = list[int]
"""One value per SUM_COLUMNS entry: every metric is additive, so partial results merge by adding."""
GroupKey = tuple[str, ...]
"""The display value of each grouping dimension ("" for unknown)."""


@functools.cache
def _rollup_sums(table: sa.Table) -> dict[str, ColumnElement[Any]]:
    """`sum(column)` for every metric column of a rollup table, built once: constructing the ~120 function
    expressions of a full summary took ~6 ms per statement, more than SQLite took to run most of them."""
    return {
        column: sa.func.sum(table.c[column]) if column in COUNT_COLUMNS else dialect.saturating_sum(table.c[column])
        for column in SUM_COLUMNS
    }


_CREDENTIAL_TYPES: Final[dict[int, str]] = {
    usage_pb2.CREDENTIAL_TYPE_MANAGED: "managed",
    usage_pb2.CREDENTIAL_TYPE_BYOK: "byok",
}
_STATUS_CLASSES: Final[dict[int, str]] = {int(status): status.display_name for status in StatusClass}
_REQUEST_TYPES: Final[dict[int, str]] = {
    value: name.removeprefix("REQUEST_TYPE_").lower()
    for name, value in usage_pb2.RequestType.items()
    if value != usage_pb2.REQUEST_TYPE_UNSPECIFIED
}

_STORED_ENUMS: Final[dict[int, dict[str, int]]] = {
    dimension: {name: value for value, name in names.items()}
    for dimension, names in (
        (pb.DIMENSION_CREDENTIAL_TYPE, _CREDENTIAL_TYPES),
        (pb.DIMENSION_STATUS_CLASS, _STATUS_CLASSES),
        (pb.DIMENSION_REQUEST_TYPE, _REQUEST_TYPES),
    )
}


class KeyNames:
    """Turns stored dimension values into display keys: gateway ids for gateway keys, names for enums."""

    def __init__(self, gateway_ids: dict[int, str]) -> None:
        self._gateway_ids = gateway_ids
        self._gateway_keys = {gateway_id: key for key, gateway_id in gateway_ids.items()}

    @classmethod
    async def load(cls, connection: AsyncConnection) -> KeyNames:
        gateways = tables.gateways
        rows = await connection.execute(sa.select(gateways.c.gateway_key, gateways.c.gateway_id))
        return cls({int(key): str(gateway_id) for key, gateway_id in rows})

    def gateway_id(self, gateway_key: int) -> str:
        return self._gateway_ids.get(gateway_key, str(gateway_key))

    def stored(self, grouping: Grouping, name: str) -> str | int | None:
        """The stored value `name` displays (name's inverse); None where that is ambiguous or unknown: the
        empty name (a NULL or an unknown value), tags, and gateway keys without a gateway."""
        dimension = grouping.dimension
        if not name or grouping.is_tag:
            return None
        if dimension == pb.DIMENSION_GATEWAY:
            return name if name in self._gateway_keys else None
        if dimension in _STORED_ENUMS:
            return _STORED_ENUMS[dimension].get(name)
        return name

    def name(self, grouping: Grouping, value: Any) -> str:
        dimension = grouping.dimension
        if value is None:
            return ""
        if dimension == pb.DIMENSION_GATEWAY:
            return self.gateway_id(int(value))
        if dimension == pb.DIMENSION_CREDENTIAL_TYPE:
            return _CREDENTIAL_TYPES.get(int(value), "")
        if dimension == pb.DIMENSION_STATUS_CLASS:
            return _STATUS_CLASSES.get(int(value), "")
        if dimension == pb.DIMENSION_REQUEST_TYPE:
            return _REQUEST_TYPES.get(int(value), "")
        return str(value)


@dataclass(frozen=True, slots=True)
class Aggregation:
    """What to sum: the selection, the output buckets, the groupings and the metrics needed."""

    selection: UsageSelection
    grid: BucketGrid
    groupings: tuple[Grouping, ...] = ()
    columns: tuple[str, ...] = SUM_COLUMNS
    """Metrics to sum (the others stay 0); fewer columns make long-range series cheaper."""

    @property
    def needs_raw_events(self) -> bool:
        return self.selection.needs_raw_events or any(grouping.is_tag for grouping in self.groupings)

    @property
    def dimension_columns(self) -> frozenset[str]:
        """The stored dimensions this aggregation filters or groups by (tags aside)."""
        grouped = (DIMENSION_COLUMNS[grouping.dimension] for grouping in self.groupings if not grouping.is_tag)
        filtered = set(self.selection.value_filters)
        if self.selection.gateway_ids:
            filtered.add("gateway_key")
        return frozenset((*grouped, *filtered))


_PLAN_IN_LOOP_BUCKETS: Final = 64
"""Plans of up to this many output buckets take well under a millisecond; longer ones go to a thread."""

Totals = dict[tuple[int, GroupKey], Sums]
"""(output bucket index, group key) -> sums."""


async def plan_for(connection: AsyncConnection, aggregation: Aggregation) -> QueryPlan:
    bounds = aggregation.grid.bounds_us
    raw_only = aggregation.needs_raw_events
    dirty = frozenset() if raw_only else await dirty_hours(connection, bounds[0], bounds[-1])
    coarse = {} if raw_only else coarse_rollups(aggregation.dimension_columns)
    if len(bounds) <= _PLAN_IN_LOOP_BUCKETS:
        return plan_sources(bounds, dirty_hours_us=dirty, raw_only=raw_only, coarse=coarse)
    # A long time series plans thousands of buckets: off the event loop (services/reporting/export.py).
    return await asyncio.to_thread(
        functools.partial(plan_sources, bounds, dirty_hours_us=dirty, raw_only=raw_only, coarse=coarse)
    )


async def aggregate(
    connection: AsyncConnection,
    aggregation: Aggregation,
    names: KeyNames,
    *,
    plan: QueryPlan | None = None,
    clamped: list[str] | None = None,
) -> Totals:
    """Sums per (bucket, group) over every source of the plan (default: the planner's), merged in Python.

    With `clamped`, the metric column of every value the database returned at an int64 bound (a saturated
    sum, or one that may be) is appended to it."""
    plan = plan if plan is not None else await plan_for(connection, aggregation)
    totals: Totals = {}
    bounds = aggregation.grid.bounds_us
    by_bucket = len(bounds) > 2
    positions = [SUM_INDEX[column] for column in aggregation.columns]
    width = len(SUM_COLUMNS)
    for source in plan.ranges:
        query = _source_query(source, plan, aggregation, by_bucket=by_bucket)
        async for row in await connection.stream(query):
            offset = 0
            bucket = 0
            if by_bucket:
                # Every source row lies inside one output bucket; its start (clamped to the range start,
                # for the partial first bucket) finds it.
                moment = max(int(row[0]) * (1_000_000 if source.is_rollup else MINUTE_US), bounds[0])
                bucket = bisect_right(bounds, moment) - 1
                offset = 1
            key = tuple(
                names.name(grouping, row[offset + index]) for index, grouping in enumerate(aggregation.groupings)
            )
            offset += len(aggregation.groupings)
            sums = totals.get((bucket, key))
            if sums is None:
                sums = totals[(bucket, key)] = [0] * width
            for index, position in enumerate(positions):
                value = row[offset + index]
                if value is not None:
                    # Exact ints as they are (Python's are unbounded; the answer is clamped at the edge);
                    # PostgreSQL's numeric sums and floats from older versions through stored_integer.
                    value = value if value.__class__ is int else stored_integer(value)
                    sums[position] += value
                    if clamped is not None and not INT64_MIN < value < INT64_MAX:
                        clamped.append(SUM_COLUMNS[position])
    return totals


def _source_query(source: Source, plan: QueryPlan, aggregation: Aggregation, *, by_bucket: bool) -> sa.Select[Any]:
    table = plan.table(source)
    group_columns, from_clause = _grouped_from(table, aggregation, by_bucket=by_bucket)
    expressions = _rollup_sums(table) if source.is_rollup else RAW_SUMS
    sums = [expressions[column] for column in aggregation.columns]
    conditions = usage_conditions(table, aggregation.selection, plan.in_table_units(source))
    query = sa.select(*group_columns, *sums).select_from(from_clause).where(*conditions)
    return query.group_by(*group_columns) if group_columns else query


def _grouped_from(
    table: sa.Table, aggregation: Aggregation, *, by_bucket: bool
) -> tuple[list[ColumnElement[Any]], sa.FromClause]:
    """The grouping expressions (bucket first, then each grouping) and the FROM clause they need."""
    group_columns: list[ColumnElement[Any]] = []
    from_clause: sa.FromClause = table
    if by_bucket:
        if table is not tables.usage_events:
            group_columns.append(table.c.bucket_start)
        else:
            # Raw events are bucketed by minute: no output bucket boundary falls inside a minute.
            group_columns.append(table.c.event_time_us / MINUTE_US)
    for position, grouping in enumerate(aggregation.groupings):
        if grouping.is_tag:
            tag = tables.usage_event_tags.alias(f"group_tag_{position}")
            on = sa.and_(
                tag.c.gateway_key == table.c.gateway_key,
                tag.c.event_id == table.c.event_id,
                tag.c.tag_key == grouping.tag_key,
            )
            from_clause = from_clause.outerjoin(tag, on)
            group_columns.append(sa.func.coalesce(tag.c.tag_value, ""))
        else:
            group_columns.append(table.c[DIMENSION_COLUMNS[grouping.dimension]])
    return group_columns, from_clause


_CATEGORY_ROLLUPS: Final = {Source.DAY: tables.token_categories_1d, Source.HOUR: tables.token_categories_1h}
_SUB_HOUR: Final = (Source.FIVE_MINUTES, Source.MINUTE, Source.RAW)
"""Sources without token category rollups: their pieces read categories from raw events."""


async def token_categories(
    connection: AsyncConnection, aggregation: Aggregation, names: KeyNames, plan: QueryPlan
) -> dict[tuple[int, GroupKey], dict[str, int]]:
    """Token sums by pricing category per (bucket, group).

    When `plan` reads the per-model rollups, compacted hours and days come from the category rollups
    (keyed alike); every other piece comes from raw events, through an index of only the events that
    reported categories."""
    bounds = aggregation.grid.bounds_us
    by_bucket = len(bounds) > 2
    queries: list[tuple[sa.Select[Any], int]] = []
    raw_ranges: list[tuple[int, int]] = [(bounds[0], bounds[-1])]
    if plan.table(Source.HOUR) is tables.usage_rollup_1h_model:
        raw_ranges = sorted(source_range for source in _SUB_HOUR for source_range in plan.ranges.get(source, ()))
        for source, table in _CATEGORY_ROLLUPS.items():
            if source in plan.ranges:
                queries.append(
                    (_category_rollup_query(table, aggregation, plan.in_table_units(source), by_bucket), 1_000_000)
                )
    if raw_ranges:
        queries.append((_raw_category_query(connection, aggregation, raw_ranges, by_bucket), MINUTE_US))
    result: dict[tuple[int, GroupKey], dict[str, int]] = {}
    group_count = len(aggregation.groupings) + by_bucket
    for query, bucket_unit_us in queries:
        async for row in await connection.stream(query):
            offset, bucket = 0, 0
            if by_bucket:
                bucket = bisect_right(bounds, max(int(row[0]) * bucket_unit_us, bounds[0])) - 1
                offset = 1
            key = tuple(names.name(grouping, row[offset + i]) for i, grouping in enumerate(aggregation.groupings))
            categories = result.setdefault((bucket, key), {})
            category = str(row[group_count])
            categories[category] = categories.get(category, 0) + stored_integer(row[group_count + 1])
    return result


def _category_rollup_query(
    table: sa.Table, aggregation: Aggregation, ranges: list[tuple[int, int]], by_bucket: bool
) -> sa.Select[Any]:
    group_columns, _ = _grouped_from(table, aggregation, by_bucket=by_bucket)
    conditions = usage_conditions(table, aggregation.selection, ranges)
    return (
        sa.select(*group_columns, table.c.category, dialect.saturating_sum(table.c.tokens))
        .where(*conditions)
        .group_by(*group_columns, table.c.category)
    )


def _raw_category_query(
    connection: AsyncConnection, aggregation: Aggregation, ranges: list[tuple[int, int]], by_bucket: bool
) -> sa.Select[Any]:
    events = tables.usage_events
    group_columns, from_clause = _grouped_from(events, aggregation, by_bucket=by_bucket)
    pairs, value = dialect.json_integer_pairs(events.c.token_categories, dialect_name=connection.dialect.name)
    conditions = usage_conditions(events, aggregation.selection, ranges, index_on_time_only=True)
    return (
        sa.select(*group_columns, pairs.c.key, dialect.saturating_sum(value))
        .select_from(from_clause)
        .join(pairs, sa.true())
        .where(events.c.token_categories.is_not(None), *conditions)
        .group_by(*group_columns, pairs.c.key)
    )


def parse_categories(text: str | None) -> dict[str, int]:
    """A usage_events.token_categories value as a dict."""
    return {str(key): int(value) for key, value in json.loads(text).items()} if text else {}


def merged(parts: Sequence[Sums]) -> Sums:
    """The column-wise sum of several metric vectors."""
    total = [0] * len(SUM_COLUMNS)
    for part in parts:
        for index, value in enumerate(part):
            total[index] += value
    return total
