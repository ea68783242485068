"""Usage summaries, breakdowns and time series: the Reporting answers built from aggregated rollup metrics."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.errors import InvalidArgumentError
from services.pagination import decode_page_token, encode_page_token, page_size
from services.pricing import PriceBooks
from services.reporting.aggregate import (
    SUM_COLUMNS,
    Aggregation,
    GroupKey,
    KeyNames,
    Sums,
    aggregate,
    merged,
    plan_for,
    token_categories,
)
from services.reporting.figures import metric_columns, metric_message, metric_value, usage_summary
from services.reporting.filters import Grouping, UsageSelection
from services.reporting.planner import bucket_grid, time_zone, whole_range
from services.storage import tables

OTHER_KEY: Final = "(other)"
DEFAULT_SERIES_TOP_N: Final = 10


async def currency_of(connection: AsyncConnection, selection: UsageSelection, prices: PriceBooks) -> str:
    """The pricing currency of the environments in scope when they share one; "" when they differ or have none."""
    environment_ids = selection.environment_ids
    if environment_ids is None:
        rows = await connection.execute(sa.select(tables.environments.c.environment_id))
        environment_ids = frozenset(str(environment_id) for (environment_id,) in rows)
    return prices.currency(environment_ids)


def _fingerprint(request: pb.GetUsageBreakdownRequest) -> str:
    """Ties a page token to the query it continues, so a token cannot be replayed against another."""
    query = pb.GetUsageBreakdownRequest()
    query.CopyFrom(request)
    query.ClearField("page_token")
    query.ClearField("page_size")
    return hashlib.sha256(query.SerializeToString(deterministic=True)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SeriesRequest:
    """A validated time-series question."""

    selection: UsageSelection
    granularity: int
    zone_name: str
    metrics: tuple[int, ...]
    split_by: Grouping | None
    top_n: int


class UsageReports:
    """Answers summary, breakdown and time-series questions from the coarsest exact sources."""

    def __init__(self, engine: AsyncEngine, *, max_points: int, prices: PriceBooks) -> None:
        self._engine = engine
        self._max_points = max_points
        self._prices = prices

    async def summary(self, selection: UsageSelection) -> pb.UsageSummary:
        aggregation = Aggregation(selection, whole_range(selection.start_us, selection.end_us))
        async with self._engine.connect() as connection:
            names = await KeyNames.load(connection)
            plan = await plan_for(connection, aggregation)
            totals = await aggregate(connection, aggregation, names, plan=plan)
            categories = await token_categories(connection, aggregation, names, plan)
            currency = await currency_of(connection, selection, self._prices)
        sums = totals.get((0, ()), [0] * len(SUM_COLUMNS))
        return usage_summary(
            sums, seconds=selection.duration_us / 1e6, currency=currency, categories=categories.get((0, ()))
        )

    async def breakdown(
        self, request: pb.GetUsageBreakdownRequest, selection: UsageSelection, groupings: tuple[Grouping, ...]
    ) -> pb.GetUsageBreakdownResponse:
        order_by = request.order_by or pb.METRIC_COST
        metric_columns(order_by, field="order_by")
        if request.top_n < 0:
            raise InvalidArgumentError("top_n", "must not be negative; 0 means no limit")
        size = page_size(request.page_size)
        fingerprint = _fingerprint(request)
        position = decode_page_token(request.page_token)
        offset = 0
        if position is not None:
            if position.get("q") != fingerprint or not isinstance(position.get("o"), int):
                raise InvalidArgumentError("page_token", "belongs to a different query; start again without it")
            offset = position["o"]
        aggregation = Aggregation(selection, whole_range(selection.start_us, selection.end_us), groupings)
        async with self._engine.connect() as connection:
            names = await KeyNames.load(connection)
            plan = await plan_for(connection, aggregation)
            totals = await aggregate(connection, aggregation, names, plan=plan)
            categories = await token_categories(connection, aggregation, names, plan)
            currency = await currency_of(connection, selection, self._prices)
        ranked = _ranked({key: sums for (_, key), sums in totals.items()}, order_by, ascending=request.ascending)
        top = ranked[: request.top_n] if request.top_n else ranked
        rest = ranked[len(top) :]
        seconds = selection.duration_us / 1e6
        response = pb.GetUsageBreakdownResponse()
        for key, sums in top[offset : offset + size]:
            summary = usage_summary(sums, seconds=seconds, currency=currency, categories=categories.get((0, key)))
            response.rows.append(pb.BreakdownRow(keys=key, summary=summary))
        if offset + size < len(top):
            response.next_page_token = encode_page_token({"q": fingerprint, "o": offset + size})
        if rest:
            other_categories: dict[str, int] = {}
            for key, _ in rest:
                for category, tokens in categories.get((0, key), {}).items():
                    other_categories[category] = other_categories.get(category, 0) + tokens
            other = usage_summary(
                merged([sums for _, sums in rest]), seconds=seconds, currency=currency, categories=other_categories
            )
            response.other.CopyFrom(pb.BreakdownRow(keys=[OTHER_KEY] * len(groupings), summary=other))
        return response

    def series_request(
        self, request: pb.GetUsageTimeSeriesRequest, selection: UsageSelection, split_by: Grouping | None
    ) -> SeriesRequest:
        if not request.metrics:
            raise InvalidArgumentError("metrics", "give at least one Metric")
        for index, metric in enumerate(request.metrics):
            metric_columns(metric, field=f"metrics[{index}]")
        if request.top_n < 0:
            raise InvalidArgumentError("top_n", "must not be negative; 0 means the default, 10")
        time_zone(request.time_zone)
        return SeriesRequest(
            selection=selection,
            granularity=request.granularity,
            zone_name=request.time_zone,
            metrics=tuple(request.metrics),
            split_by=split_by,
            top_n=request.top_n or DEFAULT_SERIES_TOP_N,
        )

    async def time_series(self, question: SeriesRequest) -> list[pb.TimeSeries]:
        selection = question.selection
        grid = bucket_grid(
            selection.start_us,
            selection.end_us,
            question.granularity,
            time_zone(question.zone_name),
            max_points=self._max_points,
        )
        columns = sorted({column for metric in question.metrics for column in metric_columns(metric, field="metrics")})
        groupings = (question.split_by,) if question.split_by is not None else ()
        aggregation = Aggregation(selection, grid, groupings, tuple(columns))
        async with self._engine.connect() as connection:
            totals = await aggregate(connection, aggregation, await KeyNames.load(connection))
        buckets = len(grid.labels_us)
        per_key: dict[GroupKey, list[Sums | None]] = {}
        for (bucket, key), sums in totals.items():
            per_key.setdefault(key, [None] * buckets)[bucket] = sums
        ranked_keys = [key for key, _ in _ranked(_key_totals(per_key), question.metrics[0], ascending=False)]
        series_keys: list[tuple[str, list[Sums | None]]] = []
        if question.split_by is None:
            series_keys.append(("", per_key.get((), [None] * buckets)))
        else:
            for key in ranked_keys[: question.top_n]:
                series_keys.append((key[0], per_key[key]))
            rest = ranked_keys[question.top_n :]
            if rest:
                series_keys.append((OTHER_KEY, _summed_buckets([per_key[key] for key in rest], buckets)))
        result = []
        for metric in question.metrics:
            for name, points in series_keys:
                result.append(_series(metric, name, points, grid.labels_us))
        return result


def _key_totals(per_key: dict[GroupKey, list[Sums | None]]) -> dict[GroupKey, Sums]:
    return {key: merged([sums for sums in points if sums is not None]) for key, points in per_key.items()}


def _summed_buckets(series: Sequence[list[Sums | None]], buckets: int) -> list[Sums | None]:
    result: list[Sums | None] = []
    for index in range(buckets):
        parts = [points[index] for points in series if points[index] is not None]
        result.append(merged([part for part in parts if part is not None]) if parts else None)
    return result


def _ranked(groups: dict[GroupKey, Sums], metric: int, *, ascending: bool) -> list[tuple[GroupKey, Sums]]:
    """Groups by a metric, largest first unless ascending; ties by key, so pages are stable."""
    values = {key: metric_value(sums, metric) for key, sums in groups.items()}
    by_key = sorted(groups.items())
    return sorted(by_key, key=lambda item: values[item[0]], reverse=not ascending)


def _series(metric: int, key: str, points: list[Sums | None], labels_us: Sequence[int]) -> pb.TimeSeries:
    empty = [0] * len(SUM_COLUMNS)
    values = [metric_value(sums if sums is not None else empty, metric) for sums in points]
    series = pb.TimeSeries(metric=metric, key=key)  # type: ignore[arg-type]
    for label_us, value in zip(labels_us, values, strict=True):
        point = series.points.add(value=metric_message(value, metric))
        point.bucket_start_time.FromMicroseconds(label_us)
    if values:
        series.min.CopyFrom(metric_message(min(values), metric))
        series.max.CopyFrom(metric_message(max(values), metric))
        series.average = sum(values) / len(values)
    return series
