"""The Usage page: KPI tiles, the trend chart and a top-N ranking for the filter in the URL."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.console.context import Console, Viewer
from services.console.formatting import metric_of, metric_text
from services.console.query import (
    CHART_METRICS,
    RANGE_CHOICES,
    RANK_METRICS,
    RANKINGS,
    TOP_CHOICES,
    ZONES,
    ViewQuery,
    span_label,
)
from services.errors import InvalidArgumentError
from services.reporting.filters import UsageSelection, groupings, select_usage
from services.reporting.reports import OTHER_KEY, BreakdownQuery, Detail, Series, SeriesRequest
from services.usage_terms.figures import DURATION_METRICS, MONEY_METRICS
from services.usage_terms.query import GRANULARITIES, METRICS

FILTER_OF_RANKING = {
    "model": "model",
    "resolved-model": "resolved",
    "key": "key",
    "user": "user",
    "environment": "env",
    "provider": "provider",
    "route": "route",
    "gateway": "gateway",
}
"""The URL filter a ranking row narrows to when clicked."""


@dataclass(frozen=True, slots=True)
class Trend:
    """The chart's one series, and its max/min/average over the buckets."""

    series: Series
    minimum: float
    maximum: float
    average: float

    @classmethod
    def of(cls, series: Series) -> Trend:
        values = series.values or [0.0]
        return cls(series, min(values), max(values), sum(values) / len(values))


@dataclass(frozen=True, slots=True)
class RankingRow:
    key: str
    summary: pb.UsageSummary
    value: float
    """The ranking metric's value, for the share bar."""
    link: str
    """The URL narrowing the view to this key ("" for "(other)" or a dimension without a filter)."""


def selection_of(query: ViewQuery, viewer: Viewer) -> UsageSelection:
    """The URL's filter, validated and scoped by the RPCs' own function (another environment: refused)."""
    return select_usage(query.usage_filter(datetime.now(UTC)), viewer.principal, field="filter")


async def usage_page(console: Console, request: Request, viewer: Viewer) -> Response:
    query = ViewQuery.from_params(request.query_params)
    selection = selection_of(query, viewer)
    summary, ranking, trend, environments = await asyncio.gather(
        console.reports.summary(selection, Detail.TILES),
        _ranking(console, query, selection),
        _trend(console, query, selection),
        console.environment_choices(viewer.principal),
    )
    figures = summary.summary()
    metric = METRICS[query.metric]
    chart: dict[str, object] = {}
    if isinstance(trend, Trend):
        chart = {
            "x": [label_us / 1e6 for label_us in trend.series.labels_us],
            "y": list(trend.series.values),
            "label": query.metric,
            "unit": "money" if metric in MONEY_METRICS else "ms" if metric in DURATION_METRICS else "count",
            "currency": figures.currency,
            "tz": query.zone,
            "avg": trend.average,
        }
        if metric == pb.METRIC_SUCCESS_RATE:
            chart["unit"] = "rate"
    zone = query.time_zone()
    start, end = selection.start_us, selection.end_us
    return console.render(
        request,
        "usage.html",
        viewer,
        title="Usage",
        query=query,
        figures=figures,
        trend=trend if isinstance(trend, Trend) else None,
        trend_error=trend if isinstance(trend, str) else "",
        chart_json=json.dumps(chart, separators=(",", ":")),
        metric=metric,
        ranking=ranking,
        environments=environments,
        span=span_label(datetime.fromtimestamp(start / 1e6, UTC), datetime.fromtimestamp(end / 1e6, UTC), zone),
        metric_text=metric_text,
        choices={
            "ranges": RANGE_CHOICES,
            "metrics": CHART_METRICS,
            "granularities": tuple(GRANULARITIES),
            "rankings": RANKINGS,
            "rank_metrics": RANK_METRICS,
            "tops": TOP_CHOICES,
            "zones": ZONES if query.zone in ZONES else (*ZONES, query.zone),
        },
        other_key=OTHER_KEY,
    )


async def _ranking(console: Console, query: ViewQuery, selection: UsageSelection) -> list[RankingRow]:
    order_by = METRICS[query.rank]
    page = await console.reports.breakdown(
        BreakdownQuery(
            selection,
            groupings([query.group_by()], field="by"),
            order_by=order_by,
            top_n=query.top,
            size=query.top,
            detail=Detail.TILES,
        )
    )
    rows = [(key[0], figures.summary()) for key, figures in page.rows]
    if page.other is not None:
        rows.append((OTHER_KEY, page.other.summary()))
    result = []
    for key, summary in rows:
        result.append(RankingRow(key, summary, metric_of(summary, order_by), _narrowing(query, key)))
    return result


def _narrowing(query: ViewQuery, key: str) -> str:
    if key == OTHER_KEY:
        return ""
    if query.by.startswith("tag:"):
        tag = f"{query.by.removeprefix('tag:')}={key}"
        return query.url("/usage", tag=(*query.tag, tag)) if tag not in query.tag else ""
    name = FILTER_OF_RANKING.get(query.by)
    if name is None or not key or key in getattr(query, name):
        return ""
    return query.url("/usage", **{name: (*getattr(query, name), key)})


async def _trend(console: Console, query: ViewQuery, selection: UsageSelection) -> Trend | str:
    """The chart's series, or why it cannot be drawn (too many buckets for the range: choose a coarser one)."""
    question = SeriesRequest(
        selection,
        granularity=GRANULARITIES[query.granularity_name()],
        zone_name=query.zone,
        metrics=(METRICS[query.metric],),
        split_by=None,
        top_n=0,
    )
    try:
        series = await console.reports.time_series(question)
    except InvalidArgumentError as error:
        return str(error)
    return Trend.of(series[0])
