"""Grouped usage export: one row per group and time bucket, computed a window of buckets at a time."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.pricing import PriceBooks
from services.reporting.aggregate import Aggregation, KeyNames, aggregate, plan_for, token_categories
from services.reporting.figures import usage_summary
from services.reporting.filters import Grouping, UsageSelection
from services.reporting.planner import BucketGrid, bucket_grid, time_zone, whole_range
from services.reporting.reports import currency_of

ROWS_PER_MESSAGE: Final = 500
BUCKETS_PER_WINDOW: Final = 1440
"""Buckets aggregated per database round: bounds the rows held in memory to one window's groups."""
MAX_EXPORT_BUCKETS: Final = 10_000_000
"""An export may span many more buckets than a chart; they are streamed window by window."""


def _windows(grid: BucketGrid) -> list[BucketGrid]:
    windows = []
    for first in range(0, len(grid.labels_us), BUCKETS_PER_WINDOW):
        last = min(first + BUCKETS_PER_WINDOW, len(grid.labels_us))
        windows.append(BucketGrid(grid.bounds_us[first : last + 1], grid.labels_us[first:last]))
    return windows


async def export_groups(
    engine: AsyncEngine,
    selection: UsageSelection,
    groupings: tuple[Grouping, ...],
    *,
    granularity: int,
    zone_name: str,
    prices: PriceBooks,
) -> AsyncIterator[list[pb.ExportRow]]:
    """Export rows in bucket order (groups by key within a bucket), in messages of ROWS_PER_MESSAGE rows."""
    if granularity == pb.GRANULARITY_UNSPECIFIED:
        grid = whole_range(selection.start_us, selection.end_us)
    else:
        zone = time_zone(zone_name)
        grid = bucket_grid(selection.start_us, selection.end_us, granularity, zone, max_points=MAX_EXPORT_BUCKETS)
    async with engine.connect() as connection:
        currency = await currency_of(connection, selection, prices)
    pending: list[pb.ExportRow] = []
    for window in _windows(grid):
        scoped = dataclasses.replace(selection, start_us=window.bounds_us[0], end_us=window.bounds_us[-1])
        aggregation = Aggregation(scoped, window, groupings)
        async with engine.connect() as connection:
            names = await KeyNames.load(connection)
            plan = await plan_for(connection, aggregation)
            totals = await aggregate(connection, aggregation, names, plan=plan)
            categories = await token_categories(connection, aggregation, names, plan)
        for bucket, key in sorted(totals):
            seconds = (window.bounds_us[bucket + 1] - window.bounds_us[bucket]) / 1e6
            summary = usage_summary(
                totals[(bucket, key)], seconds=seconds, currency=currency, categories=categories.get((bucket, key))
            )
            row = pb.ExportRow(keys=key, summary=summary)
            row.bucket_start_time.FromMicroseconds(window.labels_us[bucket])
            pending.append(row)
            if len(pending) >= ROWS_PER_MESSAGE:
                yield pending
                pending = []
    if pending:
        yield pending
