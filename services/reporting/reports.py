"""Usage summaries, breakdowns and time series: the Reporting answers built from aggregated rollup metrics."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.errors import InvalidArgumentError
from services.pagination import DEFAULT_PAGE_SIZE
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
from services.reporting.figures import UsageFigures, metric_columns, metric_value
from services.reporting.filters import Grouping, UsageSelection
from services.reporting.planner import (
    BucketGrid,
    QueryPlan,
    Source,
    bucket_grid,
    checked_step,
    time_zone,
    whole_range,
)
from services.storage import tables

OTHER_KEY: Final = "(other)"
DEFAULT_SERIES_TOP_N: Final = 10
MAX_SERIES_TOP_N: Final = 100
"""Most keys with a series of their own in one time series answer."""
MAX_SERIES_POINTS: Final = 250_000
"""Most points (metrics x series x buckets) one time series answer may hold: about 6 MB, within the default
max_message_bytes, and a bounded amount of work."""


class Detail(Enum):
    """How much of a UsageSummary a summary or breakdown figures."""

    FULL = "full"
    """Every field: latency and TTFT percentiles and token categories included (the Reporting RPCs)."""
    TILES = "tiles"
    """What a dashboard shows: counts, tokens, money, rates and averages, without percentiles or token categories
    (they stay unset): 20 of the ~120 rollup columns (the rest are the latency and TTFT histograms) and no pass
    over token categories, several times cheaper over a long range."""

    @property
    def columns(self) -> tuple[str, ...]:
        return SUM_COLUMNS if self is Detail.FULL else _TILE_COLUMNS


_HISTOGRAM_COLUMNS: Final = frozenset((*tables.LATENCY_BUCKET_COLUMNS, *tables.TTFT_BUCKET_COLUMNS))
_TILE_COLUMNS: Final = tuple(column for column in SUM_COLUMNS if column not in _HISTOGRAM_COLUMNS)


async def currency_of(connection: AsyncConnection, selection: UsageSelection, prices: PriceBooks) -> str:
    """The pricing currency of the environments in scope when they share one; "" when they differ or have none."""
    environment_ids = selection.environment_ids
    if environment_ids is None:
        rows = await connection.execute(sa.select(tables.environments.c.environment_id))
        environment_ids = frozenset(str(environment_id) for (environment_id,) in rows)
    return prices.currency(environment_ids)


@dataclass(frozen=True, slots=True)
class BreakdownQuery:
    """A breakdown question: groups of a selection ranked by a metric, one page of them."""

    selection: UsageSelection
    groupings: tuple[Grouping, ...]
    order_by: int
    """The Metric groups are ranked by."""
    ascending: bool = False
    top_n: int = 0
    """Groups ranked individually (the rest fold into one "(other)" row); 0: all of them."""
    offset: int = 0
    """Ranked groups to skip (the page's start)."""
    size: int = DEFAULT_PAGE_SIZE
    """Groups on the page."""
    detail: Detail = Detail.FULL


@dataclass(frozen=True, slots=True)
class BreakdownPage:
    """One page of a breakdown: its groups' figures in rank order, and the rest beyond top_n folded."""

    rows: list[tuple[GroupKey, UsageFigures]]
    other: UsageFigures | None
    """Every group beyond top_n summed (None: there are none)."""
    next_offset: int | None
    """Where the next page starts; None on the last page."""


@dataclass(frozen=True, slots=True)
class SeriesRequest:
    """A time-series question."""

    selection: UsageSelection
    granularity: int
    """A Granularity; the buckets are aligned in `zone_name`."""
    zone_name: str
    metrics: tuple[int, ...]
    """Metrics, one series each per key; the first ranks the keys."""
    split_by: Grouping | None
    top_n: int
    """Keys with a series of their own; the rest fold into "(other)". 0: the default, 10."""


@dataclass(frozen=True, slots=True)
class Series:
    """One metric of one key ("" unsplit) per bucket, labelled by the buckets' aligned starts."""

    metric: int
    key: str
    labels_us: Sequence[int]
    values: list[float]
    """Integers stay exact for integer metrics (figures.is_integer_metric)."""


class UsageReports:
    """Answers summary, breakdown and time-series questions from the coarsest exact sources."""

    def __init__(self, engine: AsyncEngine, *, max_points: int, prices: PriceBooks) -> None:
        self._engine = engine
        self._max_points = max_points
        self._prices = prices

    async def summary(self, selection: UsageSelection, detail: Detail = Detail.FULL) -> UsageFigures:
        aggregation = Aggregation(selection, whole_range(selection.start_us, selection.end_us), (), detail.columns)
        async with self._engine.connect() as connection:
            names = await KeyNames.load(connection)
            plan = await plan_for(connection, aggregation)
            totals = await aggregate(connection, aggregation, names, plan=plan)
            categories = {}
            if detail is Detail.FULL:
                categories = await token_categories(connection, aggregation, names, plan)
            currency = await currency_of(connection, selection, self._prices)
        sums = totals.get((0, ()), [0] * len(SUM_COLUMNS))
        return UsageFigures(
            sums, seconds=selection.duration_us / 1e6, currency=currency, categories=categories.get((0, ()), {})
        )

    async def breakdown(self, query: BreakdownQuery) -> BreakdownPage:
        metric_columns(query.order_by, field="order_by")
        if query.top_n < 0:
            raise InvalidArgumentError("top_n", "must not be negative; 0 means no limit")
        selection = query.selection
        aggregation = Aggregation(
            selection, whole_range(selection.start_us, selection.end_us), query.groupings, query.detail.columns
        )
        async with self._engine.connect() as connection:
            names = await KeyNames.load(connection)
            plan = await plan_for(connection, aggregation)
            groups = await _ranked_groups(connection, query, aggregation, names, plan)
            categories = {}
            if query.detail is Detail.FULL:
                categories = await token_categories(connection, aggregation, names, plan)
            currency = await currency_of(connection, selection, self._prices)
        # Ranking every group (there may be millions of users or keys) is CPU work: off the event loop.
        return await asyncio.to_thread(_breakdown_page, query, groups, categories, currency)

    async def time_series(self, question: SeriesRequest) -> list[Series]:
        """One series per metric and key (the top_n keys of the first metric, then "(other)")."""
        if not question.metrics:
            raise InvalidArgumentError("metrics", "give at least one Metric")
        for index, metric in enumerate(question.metrics):
            metric_columns(metric, field=f"metrics[{index}]")
        if question.top_n < 0:
            raise InvalidArgumentError("top_n", "must not be negative; 0 means the default, 10")
        if question.top_n > MAX_SERIES_TOP_N:
            raise InvalidArgumentError(
                "top_n", f"at most {MAX_SERIES_TOP_N} keys get a series of their own (the rest fold into {OTHER_KEY})"
            )
        selection = question.selection
        zone = time_zone(question.zone_name)
        step = checked_step(selection.start_us, selection.end_us, question.granularity, max_points=self._max_points)
        # Bounded before any work: every point is built, and they must fit one response message.
        split = question.split_by is not None
        series = len(question.metrics) * ((question.top_n or DEFAULT_SERIES_TOP_N) + 1 if split else 1)
        points = series * ((selection.end_us - selection.start_us) // step + 2)
        if points > MAX_SERIES_POINTS:
            raise InvalidArgumentError(
                "granularity",
                f"the answer could hold {points} points (metrics x series x buckets), more than {MAX_SERIES_POINTS}; "
                "use a coarser granularity, a shorter range, fewer metrics or a smaller top_n",
            )
        # Up to max_points boundaries in the zone, then the series: built in a thread, off the event loop.
        grid = await asyncio.to_thread(
            functools.partial(
                bucket_grid,
                selection.start_us,
                selection.end_us,
                question.granularity,
                zone,
                max_points=self._max_points,
            )
        )
        columns = sorted({column for metric in question.metrics for column in metric_columns(metric, field="metrics")})
        groupings = (question.split_by,) if question.split_by is not None else ()
        aggregation = Aggregation(selection, grid, groupings, tuple(columns))
        async with self._engine.connect() as connection:
            totals = await aggregate(connection, aggregation, await KeyNames.load(connection))
        return await asyncio.to_thread(_series, question, grid, totals)


MAX_FIGURED_GROUPS: Final = 1000
"""Most groups a breakdown sums every metric of through a filter on their keys (see _ranked_groups)."""

_SELECTION_FIELDS: Final[dict[int, str]] = {
    pb.DIMENSION_ENVIRONMENT: "environment_ids",
    pb.DIMENSION_GATEWAY: "gateway_ids",
    pb.DIMENSION_REQUESTED_MODEL: "requested_models",
    pb.DIMENSION_RESOLVED_MODEL: "resolved_models",
    pb.DIMENSION_PROVIDER: "providers",
    pb.DIMENSION_API_KEY: "api_key_ids",
    pb.DIMENSION_USER: "user_ids",
    pb.DIMENSION_ROUTE: "routes",
    pb.DIMENSION_CREDENTIAL_TYPE: "credential_types",
    pb.DIMENSION_STATUS_CLASS: "status_classes",
    pb.DIMENSION_REQUEST_TYPE: "request_types",
}
"""The UsageSelection field filtering each grouping dimension by stored value."""


@dataclass(frozen=True, slots=True)
class RankedGroups:
    """Every group of a breakdown in rank order, and the figures of those its page needs."""

    ranked: list[GroupKey]
    sums: dict[GroupKey, Sums]
    """At least the page's groups and, when groups fold into "(other)" without `other`, every group."""
    other: Sums | None = None
    """The sums of the groups beyond top_n, when known without summing them one by one."""


async def _ranked_groups(
    connection: AsyncConnection, query: BreakdownQuery, aggregation: Aggregation, names: KeyNames, plan: QueryPlan
) -> RankedGroups:
    """The groups of a breakdown, ranked, with the figures its page needs.

    Groups by user or API key read the full-key rollups, whose rows are nearly one per request and user: summing
    all ~120 metrics of every row per group (and sorting those wide rows into groups) took seconds at 10 M events.
    So the groups are ranked first from the order_by metric's columns alone, then every metric is summed for only
    the groups on the page (and, when groups fold into "(other)", the top_n), filtered by their stored keys; the
    "(other)" row is the total (from the narrowest rollups) less those groups. That is exact because every metric
    is additive and no sum came back at an int64 bound (a sum that may have saturated sends the breakdown back to
    one full pass, as do groups whose key does not map back to one stored value, and tags)."""
    full_key = not aggregation.needs_raw_events and plan.table(Source.HOUR) is tables.usage_rollup_1h
    if full_key:
        ranking = replace(aggregation, columns=metric_columns(query.order_by, field="order_by"))
        metric_sums = await aggregate(connection, ranking, names, plan=plan)
        # Ranking every group (there may be millions of users or keys) is CPU work: off the event loop.
        ranked = await asyncio.to_thread(_ranked_keys, metric_sums, query)
        top = ranked[: query.top_n] if query.top_n else ranked
        folds = len(top) < len(ranked)
        wanted = top if folds else top[query.offset : query.offset + query.size]
        if not wanted:
            return RankedGroups(ranked, {})  # a page past the last group
        narrowed = _narrowed(aggregation.selection, aggregation.groupings, wanted, names)
        if narrowed is not None:
            clamped: list[str] = []
            figured = await aggregate(
                connection, replace(aggregation, selection=narrowed), names, plan=plan, clamped=clamped
            )
            sums = {key: figured[(0, key)] for key in wanted if (0, key) in figured}
            other = None
            if folds:
                whole = Aggregation(aggregation.selection, aggregation.grid, (), aggregation.columns)
                total = (await aggregate(connection, whole, names, clamped=clamped)).get(
                    (0, ()), [0] * len(SUM_COLUMNS)
                )
                other = [value - part for value, part in zip(total, merged(list(sums.values())), strict=True)]
            if not clamped and len(sums) == len(wanted):
                return RankedGroups(ranked, sums, other)
    totals = await aggregate(connection, aggregation, names, plan=plan)
    groups = {key: sums for (_, key), sums in totals.items()}
    return RankedGroups(await asyncio.to_thread(_ranked_keys, totals, query), groups)


def _ranked_keys(totals: dict[tuple[int, GroupKey], Sums], query: BreakdownQuery) -> list[GroupKey]:
    ranked = _ranked({key: sums for (_, key), sums in totals.items()}, query.order_by, ascending=query.ascending)
    return [key for key, _ in ranked]


def _narrowed(
    selection: UsageSelection, groupings: tuple[Grouping, ...], keys: Sequence[GroupKey], names: KeyNames
) -> UsageSelection | None:
    """`selection` narrowed to the stored values of `keys` in each grouping dimension (a superset of the keys'
    rows when there are several dimensions); None when there are too many keys, none, or one does not map back."""
    if not keys or len(keys) > MAX_FIGURED_GROUPS:
        return None
    changes: dict[str, object] = {}
    for position, grouping in enumerate(groupings):
        stored = {names.stored(grouping, key[position]) for key in keys}
        if None in stored or grouping.dimension not in _SELECTION_FIELDS:
            return None
        values = sorted(stored, key=str)
        field = _SELECTION_FIELDS[grouping.dimension]
        changes[field] = frozenset(values) if field == "environment_ids" else tuple(values)
    return replace(selection, **changes)  # type: ignore[arg-type]


def _breakdown_page(
    query: BreakdownQuery,
    groups: RankedGroups,
    categories: dict[tuple[int, GroupKey], dict[str, int]],
    currency: str,
) -> BreakdownPage:
    selection = query.selection
    ranked = groups.ranked
    top = ranked[: query.top_n] if query.top_n else ranked
    rest = ranked[len(top) :]
    seconds = selection.duration_us / 1e6

    def figures(key: GroupKey, sums: Sums) -> UsageFigures:
        return UsageFigures(sums, seconds=seconds, currency=currency, categories=categories.get((0, key), {}))

    end = query.offset + query.size
    other = None
    if rest:
        other_categories: dict[str, int] = {}
        for key in rest:
            for category, tokens in categories.get((0, key), {}).items():
                other_categories[category] = other_categories.get(category, 0) + tokens
        other_sums = groups.other if groups.other is not None else merged([groups.sums[key] for key in rest])
        other = UsageFigures(other_sums, seconds=seconds, currency=currency, categories=other_categories)
    return BreakdownPage(
        rows=[(key, figures(key, groups.sums[key])) for key in top[query.offset : end]],
        other=other,
        next_offset=end if end < len(top) else None,
    )


def _series(question: SeriesRequest, grid: BucketGrid, totals: dict[tuple[int, GroupKey], Sums]) -> list[Series]:
    """The series of a time-series question from its sums per (bucket, key).

    Only the series shown are laid out bucket by bucket (the top_n keys and "(other)"), so the work is bounded
    by the rows the database returned, never by keys times buckets."""
    buckets = len(grid.labels_us)
    key_totals: dict[GroupKey, Sums] = {}
    for (_, key), sums in totals.items():
        known = key_totals.get(key)
        key_totals[key] = list(sums) if known is None else merged([known, sums])
    ranked_keys = [key for key, _ in _ranked(key_totals, question.metrics[0], ascending=False)]
    top_n = question.top_n or DEFAULT_SERIES_TOP_N
    shown: dict[GroupKey, str] = (
        {key: key[0] for key in ranked_keys[:top_n]} if question.split_by is not None else {(): ""}
    )
    points: dict[str, list[Sums | None]] = {}
    for (bucket, key), sums in totals.items():
        name = shown.get(key, OTHER_KEY)
        line = points.setdefault(name, [None] * buckets)
        known_sums = line[bucket]
        line[bucket] = sums if known_sums is None else merged([known_sums, sums])
    names = list(shown.values())
    if question.split_by is not None and len(ranked_keys) > top_n:
        names.append(OTHER_KEY)
    empty = [0] * len(SUM_COLUMNS)
    return [
        Series(
            metric,
            name,
            grid.labels_us,
            [metric_value(sums if sums is not None else empty, metric) for sums in points.get(name, [None] * buckets)],
        )
        for metric in question.metrics
        for name in names
    ]


def _ranked(groups: dict[GroupKey, Sums], metric: int, *, ascending: bool) -> list[tuple[GroupKey, Sums]]:
    """Groups by a metric, largest first unless ascending; ties by key, so pages are stable."""
    values = {key: metric_value(sums, metric) for key, sums in groups.items()}
    by_key = sorted(groups.items())
    return sorted(by_key, key=lambda item: values[item[0]], reverse=not ascending)
