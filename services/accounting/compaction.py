"""Keeps the hourly and daily rollups exact (compaction) and deletes what is past retention (pruning).

Compaction. Ingest adds every new event into ``usage_rollup_1m`` only. Each 1m row carries
``compacted_attempt_count``, a per-row watermark: the row's ``attempt_count`` when compaction last folded it
into 1h and 1d. Ingest never writes it and every event adds 1 to ``attempt_count``, so a row ingest touched
since (a new minute, more events in a minute, or a LATE event for a minute compacted long ago) is "dirty"
(``attempt_count <> compacted_attempt_count``, found through a partial index). Compaction takes the hours
holding dirty rows and, in ONE transaction, REPLACES those hours' 1h rows with the sum of their 1m rows,
replaces the days containing them in 1d with the sum of their 1h rows, and advances the watermark of the
rows it summed. The other keys' 1h and 1d rollups (tables.COARSE_ROLLUPS) are rebuilt in the same
transaction, each from a wider key's hours, and so are the five-minute rollups of the narrow keys, so every
key and bucket width always agrees; so are the hours' and days' token category sums
(tables.token_category_rollup_table), from the raw events of those hours. Replacing rather than adding makes
a rerun harmless and a crash at any step a rollback, so nothing is ever counted twice. Only closed minutes get
their watermark advanced (so compaction does not contend with ingest on the live minute); the open minute
keeps its hour dirty until the next run.

Reporting's planner reads 1h and 1d only for hours without dirty rows (dirty_hours, here beside the layout
it reads), so reports are exact at every moment: compaction only decides how much can be read from the
coarse tables.

Retention. A late event can arrive up to ``raw_event_retention`` after its time (older ones are rejected as
TOO_OLD), and re-compacting its hour needs every minute of it, so per-minute rows are kept at least that
long (settings enforce raw <= 1m <= 1h <= 1d). Everything is pruned by whole days, one day behind the
retention: the day that straddles the cutoff keeps every raw event, minute and hour that re-compacting it
needs (the hour's token category sums are rebuilt from its raw events, so a half-pruned hour would lose
some). Token category rollups go with the hourly and daily rollups they sit beside.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.accounting.measures import COUNT_COLUMNS
from services.settings import ServerSettings
from services.storage import dialect, tables
from services.storage.uow import UnitOfWork

log = structlog.get_logger("meterwire.accounting.compaction")

HOUR_S: Final = 3600
FIVE_MINUTES_S: Final = 300
DAY_S: Final = 86_400
HOURS_PER_TRANSACTION: Final = 48
"""Dirty hours compacted per transaction: bounds a catch-up run's transaction (and its locks)."""
_RETRIES: Final = 5

_m, _h, _d = tables.usage_rollup_1m, tables.usage_rollup_1h, tables.usage_rollup_1d


@dataclass(frozen=True, slots=True)
class CompactionReport:
    hours: int
    days: int


def _in_ranges(column: sa.ColumnElement[int], starts: list[int], width: int) -> sa.ColumnElement[bool]:
    return sa.or_(*(sa.and_(column >= start, column < start + width) for start in starts))


def _rebuild(
    target: sa.Table, source: sa.Table, starts: list[int], width: int, bucket_width: int | None = None
) -> list[sa.Executable]:
    """Statements replacing `target`'s rows in [start, start + width) for each of `starts` with the sums of
    `source` rows within them, in buckets of `bucket_width` (default: `width`, one bucket each).

    `target`'s key must be `source`'s or a subset of it (the narrow rollups fold the full-key ones).
    """
    key = [column.name for column in target.primary_key.columns]
    metrics = [column.name for column in target.columns if not column.primary_key]
    step = bucket_width or width
    bucket = source.c.bucket_start - source.c.bucket_start % step
    dimensions = [source.c[name] for name in key[1:]]
    # Counts cannot reach 2^63; sums of per-event values saturate (services.accounting.bounds).
    sums = [
        sa.func.sum(source.c[name]) if name in COUNT_COLUMNS else dialect.saturating_sum(source.c[name])
        for name in metrics
    ]
    select = (
        sa.select(bucket, *dimensions, *sums)
        .where(_in_ranges(source.c.bucket_start, starts, width))
        .group_by(bucket, *dimensions)
    )
    return [
        target.delete().where(_in_ranges(target.c.bucket_start, starts, width)),
        target.insert().from_select([*key, *metrics], select),
    ]


def _rebuild_token_categories(hours: list[int], *, dialect_name: str) -> list[sa.Executable]:
    """Statements replacing the hours' token category rollups with the sums of their raw events' categories.

    Late events are accepted only within raw retention (older ones are rejected as TOO_OLD), so an hour
    that can still turn dirty still has every raw event it needs."""
    events, target = tables.usage_events, tables.token_categories_1h
    pairs, value = dialect.json_integer_pairs(events.c.token_categories, dialect_name=dialect_name)
    hour = events.c.event_time_us // (HOUR_S * 1_000_000) * HOUR_S
    key = [column.name for column in target.primary_key.columns]
    dimensions = [events.c[name] for name in key[1:-1]]
    in_hours = _in_ranges(events.c.event_time_us, [h * 1_000_000 for h in hours], HOUR_S * 1_000_000)
    select = (
        sa.select(hour, *dimensions, pairs.c.key, dialect.saturating_sum(value))
        .select_from(events)
        .join(pairs, sa.true())
        .where(events.c.token_categories.is_not(None), in_hours)
        .group_by(hour, *dimensions, pairs.c.key)
    )
    return [
        target.delete().where(target.c.bucket_start.in_(hours)),
        target.insert().from_select([*key, "tokens"], select),
    ]


async def compact_once(engine: AsyncEngine, *, now_s: int, hours: list[int]) -> int:
    """Compacts the given dirty hours in one transaction; returns how many days were rebuilt."""
    days = sorted({hour - hour % DAY_S for hour in hours})
    closed_before = now_s - now_s % 60
    if engine.dialect.name == "postgresql":
        # A snapshot for the whole transaction: a 1m row changed by ingest after it was summed fails the
        # watermark update (serialization error, retried) instead of being marked with a count not summed.
        engine = engine.execution_options(isolation_level="REPEATABLE READ")
    async with UnitOfWork(engine) as uow:
        connection = uow.connection
        # Each key from a wider one (tables.RollupLayout.built_from): full-key hours from minutes, narrower
        # hours from them; five minutes likewise, from minutes or the wider key's five minutes.
        five_minutes_of = {layout.hourly: layout.five_minutes for layout in tables.COARSE_ROLLUPS}
        for layout in reversed(tables.COARSE_ROLLUPS):
            for statement in _rebuild(layout.hourly, layout.built_from, hours, HOUR_S):
                await connection.execute(statement)
            if layout.five_minutes is not None:
                wider = five_minutes_of.get(layout.built_from)
                source = wider if wider is not None else _m
                for statement in _rebuild(layout.five_minutes, source, hours, HOUR_S, FIVE_MINUTES_S):
                    await connection.execute(statement)
        await connection.execute(
            _m.update()
            .where(
                tables.ROLLUP_1M_DIRTY,
                _in_ranges(_m.c.bucket_start, hours, HOUR_S),
                _m.c.bucket_start < closed_before,
            )
            .values(compacted_attempt_count=_m.c.attempt_count)
        )
        for statement in _rebuild_token_categories(hours, dialect_name=engine.dialect.name):
            await connection.execute(statement)
        for layout in reversed(tables.COARSE_ROLLUPS):
            for statement in _rebuild(layout.daily, layout.hourly, days, DAY_S):
                await connection.execute(statement)
        for statement in _rebuild(tables.token_categories_1d, tables.token_categories_1h, days, DAY_S):
            await connection.execute(statement)
        await uow.commit()
    return len(days)


_HOUR_US: Final = HOUR_S * 1_000_000


def dirty_hours_query(start_s: int, end_s: int) -> sa.Select[int]:
    """Hour starts (epoch seconds) in [start_s, end_s) holding a dirty per-minute row, oldest first.

    A loose index scan through ix_usage_rollup_1m_dirty: one ordered probe per dirty hour (the first dirty
    row at or after the previous hour's end), not one read per dirty row; an hour being written holds
    thousands. On PostgreSQL it also copes without VACUUM: every row compaction cleans leaves its entry in
    the partial index until the table is vacuumed, and a DISTINCT over the range read them all from the
    table on every report (0.9 s at 1 M rows right after a full compaction); an ordered index scan marks
    such entries dead as it passes them, so the next report skips them without touching the table.
    """
    bucket = _m.c.bucket_start

    def first_dirty_hour(at_or_after: sa.ColumnElement[int] | int) -> sa.ScalarSelect[int]:
        return (
            sa.select(bucket - bucket % HOUR_S)
            .where(tables.ROLLUP_1M_DIRTY, bucket >= at_or_after, bucket < end_s)
            .order_by(bucket)
            .limit(1)
            .scalar_subquery()
        )

    found = sa.select(first_dirty_hour(start_s).label("hour")).cte("dirty_hours", recursive=True)
    found = found.union_all(sa.select(first_dirty_hour(found.c.hour + HOUR_S)).where(found.c.hour.is_not(None)))
    return sa.select(found.c.hour).where(found.c.hour.is_not(None))


async def dirty_hours(connection: AsyncConnection, start_us: int, end_us: int) -> frozenset[int]:
    """Hour starts (epoch microseconds) within the range whose hourly and daily rollups are not exact yet."""
    query = dirty_hours_query((start_us - start_us % _HOUR_US) // 1_000_000, end_us // 1_000_000 + 1)
    return frozenset(int(hour) * 1_000_000 for (hour,) in await connection.execute(query))


async def dirty_hour_starts(engine: AsyncEngine) -> list[int]:
    """Every hour (epoch seconds) holding a per-minute row not yet folded into 1h and 1d, oldest first."""
    async with engine.connect() as connection:
        return [int(hour) for (hour,) in await connection.execute(dirty_hours_query(0, 2**62))]


async def compact(engine: AsyncEngine, *, now_s: int | None = None) -> CompactionReport:
    """Folds every dirty hour into 1h and 1d, a bounded number of hours per transaction."""
    now_s = int(time.time()) if now_s is None else now_s
    hours = await dirty_hour_starts(engine)
    days = 0
    for start in range(0, len(hours), HOURS_PER_TRANSACTION):
        chunk = hours[start : start + HOURS_PER_TRANSACTION]
        for attempt in range(_RETRIES):
            try:
                days += await compact_once(engine, now_s=now_s, hours=chunk)
                break
            except DBAPIError as error:
                # Serialization failures, deadlocks and a busy SQLite: the transaction rolled back whole.
                if attempt == _RETRIES - 1:
                    raise
                log.info("compaction retried", error=type(error.orig).__name__, attempt=attempt + 1)
                await asyncio.sleep(0.05 * 2**attempt)
    return CompactionReport(hours=len(hours), days=days)


@dataclass(frozen=True, slots=True)
class PruneReport:
    raw_events: int
    rollup_rows: dict[str, int]


def _day_floor(seconds: float) -> int:
    whole = int(seconds)
    return whole - whole % DAY_S


async def prune(engine: AsyncEngine, settings: ServerSettings, *, now_s: float | None = None) -> PruneReport:
    """Deletes raw events (and their tags) and rollup rows past their retention, in bounded chunks.

    Run compaction first: a dirty per-minute row must reach 1h and 1d before it may go.
    """
    now_s = time.time() if now_s is None else now_s
    chunk = settings.retention_prune_chunk_rows
    events = tables.usage_events
    raw_cutoff_us = (_day_floor(now_s - settings.raw_event_retention.total_seconds()) - DAY_S) * 1_000_000
    raw_deleted = 0
    async with engine.connect() as connection:
        environment_ids = [str(e) for (e,) in await connection.execute(sa.select(events.c.environment_id).distinct())]
    for environment_id in environment_ids:
        while True:
            oldest = (
                sa.select(events.c.event_key)
                .where(events.c.environment_id == environment_id, events.c.event_time_us < raw_cutoff_us)
                .limit(chunk)
            )
            async with UnitOfWork(engine) as uow:
                # Tags go with their events (ON DELETE CASCADE).
                result = await uow.connection.execute(events.delete().where(events.c.event_key.in_(oldest)))
                await uow.commit()
            raw_deleted += result.rowcount
            if result.rowcount < chunk:
                break
    rollups: dict[str, int] = {}
    # One day behind: the oldest day still open to late events keeps every minute and hour it needs.
    # (table, retention, rows deleted per transaction as a time slice, days kept behind the cutoff)
    targets = [(_m, settings.rollup_1m_retention, HOUR_S, 1)]
    # Five minutes go with the minutes they sum (kept as long: they answer what minutes answer, more cheaply).
    targets += [
        (layout.five_minutes, settings.rollup_1m_retention, HOUR_S, 1)
        for layout in tables.COARSE_ROLLUPS
        if layout.five_minutes is not None
    ]
    pairs = [(layout.hourly, layout.daily) for layout in tables.COARSE_ROLLUPS]
    for hourly, daily in (*pairs, (tables.token_categories_1h, tables.token_categories_1d)):
        targets += [
            (hourly, settings.rollup_1h_retention, DAY_S, 1),
            (daily, settings.rollup_1d_retention, 30 * DAY_S, 0),
        ]
    for table, retention, slice_s, days_behind in targets:
        cutoff = _day_floor(now_s - retention.total_seconds()) - days_behind * DAY_S
        rollups[table.name] = await _prune_rollup(engine, table, cutoff, slice_s)
    return PruneReport(raw_events=raw_deleted, rollup_rows=rollups)


async def _prune_rollup(engine: AsyncEngine, table: sa.Table, cutoff: int, slice_s: int) -> int:
    """Deletes rows before `cutoff` one time slice per transaction, oldest first."""
    deleted = 0
    while True:
        async with UnitOfWork(engine) as uow:
            oldest = await uow.connection.scalar(
                sa.select(sa.func.min(table.c.bucket_start)).where(table.c.bucket_start < cutoff)
            )
            if oldest is None:
                return deleted
            end = min(int(oldest) + slice_s, cutoff)
            result = await uow.connection.execute(
                table.delete().where(table.c.bucket_start >= oldest, table.c.bucket_start < end)
            )
            await uow.commit()
        deleted += result.rowcount
