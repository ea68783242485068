"""Grouped usage export: one row per group and time bucket, computed a window of buckets at a time.

The work is bounded before it starts (at most reporting_max_export_buckets buckets, else INVALID_ARGUMENT), the
grid is built one window at a time (never the whole range at once), and turning a window's sums into messages
runs in a thread: the event loop is never held for longer than one window's database round, so health checks,
acks and heartbeats keep being answered while a long export streams. A caller that stops listening (deadline
or cancellation) ends the export at the next window.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.pricing import PriceBooks
from services.reporting.aggregate import (
    Aggregation,
    GroupKey,
    KeyNames,
    Sums,
    aggregate,
    plan_for,
    token_categories,
)
from services.reporting.figures import usage_summary
from services.reporting.filters import Grouping, UsageSelection
from services.reporting.planner import BucketGrid, bucket_windows, time_zone, whole_range
from services.reporting.reports import currency_of

ROWS_PER_MESSAGE: Final = 500
BUCKETS_PER_WINDOW: Final = 1440
"""Buckets aggregated per database round: bounds the rows held in memory to one window's groups."""


def _grid_windows(
    selection: UsageSelection, granularity: int, zone_name: str, max_buckets: int
) -> Iterator[BucketGrid]:
    if granularity == pb.GRANULARITY_UNSPECIFIED:
        return iter([whole_range(selection.start_us, selection.end_us)])
    return bucket_windows(
        selection.start_us,
        selection.end_us,
        granularity,
        time_zone(zone_name),
        max_points=max_buckets,
        per_window=BUCKETS_PER_WINDOW,
    )


def _window_rows(
    window: BucketGrid,
    totals: dict[tuple[int, GroupKey], Sums],
    categories: dict[tuple[int, GroupKey], dict[str, int]],
    currency: str,
) -> list[pb.ExportRow]:
    rows = []
    for bucket, key in sorted(totals):
        seconds = (window.bounds_us[bucket + 1] - window.bounds_us[bucket]) / 1e6
        summary = usage_summary(
            totals[(bucket, key)], seconds=seconds, currency=currency, categories=categories.get((bucket, key))
        )
        row = pb.ExportRow(keys=key, summary=summary)
        row.bucket_start_time.FromMicroseconds(window.labels_us[bucket])
        rows.append(row)
    return rows


async def export_groups(
    engine: AsyncEngine,
    selection: UsageSelection,
    groupings: tuple[Grouping, ...],
    *,
    granularity: int,
    zone_name: str,
    prices: PriceBooks,
    max_buckets: int,
) -> AsyncIterator[list[pb.ExportRow]]:
    """Export rows in bucket order (groups by key within a bucket), in messages of ROWS_PER_MESSAGE rows.

    INVALID_ARGUMENT (field granularity) before any work when the range makes more than `max_buckets`."""
    windows = _grid_windows(selection, granularity, zone_name, max_buckets)
    async with engine.connect() as connection:
        currency = await currency_of(connection, selection, prices)
        names = await KeyNames.load(connection)
    pending: list[pb.ExportRow] = []
    while True:
        # A window's grid (BUCKETS_PER_WINDOW boundaries in the zone) is built in a thread, like its rows.
        window = await asyncio.to_thread(next, windows, None)
        if window is None:
            break
        scoped = dataclasses.replace(selection, start_us=window.bounds_us[0], end_us=window.bounds_us[-1])
        aggregation = Aggregation(scoped, window, groupings)
        async with engine.connect() as connection:
            plan = await plan_for(connection, aggregation)
            totals = await aggregate(connection, aggregation, names, plan=plan)
            categories = await token_categories(connection, aggregation, names, plan)
        pending.extend(await asyncio.to_thread(_window_rows, window, totals, categories, currency))
        while len(pending) >= ROWS_PER_MESSAGE:
            yield pending[:ROWS_PER_MESSAGE]
            pending = pending[ROWS_PER_MESSAGE:]
    if pending:
        yield pending
