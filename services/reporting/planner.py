"""Chooses, for every piece of a time range, the coarsest source that answers it exactly.

Sources, coarsest first: ``usage_rollup_1d``, ``usage_rollup_1h``, five-minute rollups,
``usage_rollup_1m`` and raw ``usage_events``. Hours and days come in several keys (tables.COARSE_ROLLUPS):
a report reads the layout with the fewest rows whose key holds every dimension it filters or groups by; five
minutes exist for the narrow keys only (elsewhere minutes stand in). A rollup row answers a piece exactly
only if its whole bucket lies inside one output bucket (the range, or one time-series bucket), so a piece is
cut at the output boundaries first and then covered, from its edges inwards, by raw events (sub-minute
edges), minutes, five minutes, hours and whole UTC days.

Hours and days are only exact once compaction has folded every per-minute row of them in. An hour holding a
per-minute row that ingest changed after its last compaction ("dirty", see services/accounting/compaction.py)
is read from the minutes instead (five minutes too), and a day holding a dirty hour from its hours. Tag filters and tag
groupings only exist on raw events, so they read raw events for the whole range.

The grid of output buckets is aligned in an IANA time zone with zoneinfo: day buckets run from local
midnight to local midnight (23 or 25 hours across daylight-saving changes); in a zone whose offset is not
whole hours (Asia/Kolkata, +05:30) local days start at half past an hour, which hourly rollups cannot
split, so their edges come from minutes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from itertools import islice, pairwise
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.errors import InvalidArgumentError
from services.storage import tables

MINUTE_US: Final = 60_000_000
HOUR_US: Final = 60 * MINUTE_US
DAY_US: Final = 24 * HOUR_US

_GRANULARITY_US: Final[dict[int, int]] = {
    pb.GRANULARITY_MINUTE: MINUTE_US,
    pb.GRANULARITY_FIVE_MINUTES: 5 * MINUTE_US,
    pb.GRANULARITY_HOUR: HOUR_US,
    pb.GRANULARITY_DAY: DAY_US,
}


class Source(Enum):
    """Where a piece of a report is read from."""

    DAY = (tables.usage_rollup_1d, DAY_US)
    HOUR = (tables.usage_rollup_1h, HOUR_US)
    FIVE_MINUTES = (tables.usage_rollup_5m_narrow, 5 * MINUTE_US)
    """Planned only where the layout read has five-minute rollups (QueryPlan.coarse names the table)."""
    MINUTE = (tables.usage_rollup_1m, MINUTE_US)
    RAW = (tables.usage_events, 1)

    @property
    def table(self) -> sa.Table:
        return self.value[0]

    @property
    def is_rollup(self) -> bool:
        return self is not Source.RAW


def coarse_rollups(columns: frozenset[str]) -> dict[Source, sa.Table]:
    """The hourly and daily rollups (and five-minute ones, where that layout has them) with the fewest rows
    whose key holds every one of `columns`."""
    for layout in tables.COARSE_ROLLUPS:
        if columns <= layout.key:
            chosen = {Source.HOUR: layout.hourly, Source.DAY: layout.daily}
            if layout.five_minutes is not None:
                chosen[Source.FIVE_MINUTES] = layout.five_minutes
            return chosen
    raise ValueError(f"no rollup is keyed by {sorted(columns)}")


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """Per source, the merged [start, end) ranges in epoch microseconds it answers."""

    ranges: dict[Source, tuple[tuple[int, int], ...]]
    coarse: dict[Source, sa.Table] = field(default_factory=dict)
    """The hourly, daily and five-minute tables to read (coarse_rollups); missing: the full-key ones."""

    def table(self, source: Source) -> sa.Table:
        return self.coarse.get(source, source.table)

    def in_table_units(self, source: Source) -> list[tuple[int, int]]:
        """The ranges in the unit of the source's time column (rollups: seconds; raw events: microseconds)."""
        if source.is_rollup:
            return [(start // 1_000_000, end // 1_000_000) for start, end in self.ranges[source]]
        return list(self.ranges[source])


def _floor(value: int, unit: int) -> int:
    return value - value % unit


def _ceil(value: int, unit: int) -> int:
    return -_floor(-value, unit)


def plan_sources(
    bounds_us: Sequence[int],
    *,
    dirty_hours_us: frozenset[int],
    raw_only: bool,
    coarse: dict[Source, sa.Table] | None = None,
) -> QueryPlan:
    """The plan for consecutive output buckets [bounds[i], bounds[i+1]); `dirty_hours_us` are hour starts."""
    coarse = coarse or {}
    pieces: dict[Source, list[tuple[int, int]]] = {source: [] for source in Source}
    if raw_only:
        pieces[Source.RAW].append((bounds_us[0], bounds_us[-1]))
    else:
        dirty_days = sorted({_floor(hour, DAY_US) for hour in dirty_hours_us})
        fives = Source.FIVE_MINUTES in coarse
        for start, end in pairwise(bounds_us):
            _cover(start, end, pieces, dirty_hours_us, dirty_days, fives=fives)
    return QueryPlan({source: _merged(ranges) for source, ranges in pieces.items() if ranges}, coarse)


def _cover(
    start: int,
    end: int,
    pieces: dict[Source, list[tuple[int, int]]],
    dirty_hours: frozenset[int],
    dirty_days: Sequence[int],
    *,
    fives: bool,
) -> None:
    """Covers [start, end) from its edges inwards: raw seconds, minutes (five minutes where `fives`), hours,
    then whole days.

    The work is bounded by the dirty days inside the piece, never by its length: clean days in between are
    one range, so a summary from year 1 to 9999 plans as fast as one over a day."""
    minute_start, minute_end = _ceil(start, MINUTE_US), _floor(end, MINUTE_US)
    if minute_start >= minute_end:
        pieces[Source.RAW].append((start, end))
        return
    _add(pieces[Source.RAW], start, minute_start)
    _add(pieces[Source.RAW], minute_end, end)
    hour_start, hour_end = _ceil(minute_start, HOUR_US), _floor(minute_end, HOUR_US)
    if hour_start >= hour_end:
        _minutes(minute_start, minute_end, pieces, dirty_hours, fives=fives)
        return
    _minutes(minute_start, hour_start, pieces, dirty_hours, fives=fives)
    _minutes(hour_end, minute_end, pieces, dirty_hours, fives=fives)
    day_start, day_end = _ceil(hour_start, DAY_US), _floor(hour_end, DAY_US)
    if day_start >= day_end:
        _hours(hour_start, hour_end, pieces, dirty_hours)
        return
    _hours(hour_start, day_start, pieces, dirty_hours)
    _hours(day_end, hour_end, pieces, dirty_hours)
    clean_from = day_start
    for index in range(bisect_left(dirty_days, day_start), bisect_left(dirty_days, day_end)):
        day = dirty_days[index]
        _add(pieces[Source.DAY], clean_from, day)
        _hours(day, day + DAY_US, pieces, dirty_hours)
        clean_from = day + DAY_US
    _add(pieces[Source.DAY], clean_from, day_end)


def _minutes(
    start: int, end: int, pieces: dict[Source, list[tuple[int, int]]], dirty_hours: frozenset[int], *, fives: bool
) -> None:
    """Covers whole minutes [start, end) hour by hour: by five minutes where `fives` and the hour is compacted,
    else by minutes."""
    while start < end:
        hour = _floor(start, HOUR_US)
        stop = min(end, hour + HOUR_US)
        five_start, five_end = _ceil(start, 5 * MINUTE_US), _floor(stop, 5 * MINUTE_US)
        if fives and hour not in dirty_hours and five_start < five_end:
            _add(pieces[Source.MINUTE], start, five_start)
            pieces[Source.FIVE_MINUTES].append((five_start, five_end))
            _add(pieces[Source.MINUTE], five_end, stop)
        else:
            pieces[Source.MINUTE].append((start, stop))
        start = stop


def _hours(start: int, end: int, pieces: dict[Source, list[tuple[int, int]]], dirty_hours: frozenset[int]) -> None:
    for hour in range(start, end, HOUR_US):
        source = Source.MINUTE if hour in dirty_hours else Source.HOUR
        pieces[source].append((hour, hour + HOUR_US))


def _add(ranges: list[tuple[int, int]], start: int, end: int) -> None:
    if start < end:
        ranges.append((start, end))


def _merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    result: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if result and result[-1][1] >= start:
            result[-1] = (result[-1][0], max(result[-1][1], end))
        else:
            result.append((start, end))
    return tuple(result)


def time_zone(name: str, *, field: str = "time_zone") -> ZoneInfo:
    """The IANA zone named (empty: UTC)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(field, f"{name!r} is not an IANA time zone such as 'America/New_York'") from None


@dataclass(frozen=True, slots=True)
class BucketGrid:
    """Output buckets: bucket i holds [bounds[i], bounds[i+1]) and is labelled labels[i] (its aligned start)."""

    bounds_us: tuple[int, ...]
    labels_us: tuple[int, ...]


def whole_range(start_us: int, end_us: int) -> BucketGrid:
    return BucketGrid((start_us, end_us), (start_us,))


def checked_step(start_us: int, end_us: int, granularity: int, *, max_points: int, field: str = "granularity") -> int:
    """The bucket length of `granularity`, once the range is known to make at most `max_points` buckets:
    INVALID_ARGUMENT otherwise, before anything is built."""
    step = _GRANULARITY_US.get(granularity)
    if step is None:
        raise InvalidArgumentError(field, "is required: GRANULARITY_MINUTE, _FIVE_MINUTES, _HOUR or _DAY")
    # 25-hour days make at most one more bucket than a plain division says.
    if (end_us - start_us) // step + 2 > max_points:
        raise InvalidArgumentError(
            field,
            f"the time range makes more than {max_points} buckets; use a coarser granularity or a shorter range",
        )
    return step


def _labels(start_us: int, end_us: int, granularity: int, step: int, zone: ZoneInfo) -> Iterator[int]:
    """The aligned start of every bucket covering [start, end), one at a time."""
    boundary = _local_floor(start_us, granularity, zone)
    while boundary < end_us:
        yield boundary
        boundary = _next_boundary(boundary, granularity, step, zone)


def bucket_grid(
    start_us: int, end_us: int, granularity: int, zone: ZoneInfo, *, max_points: int, field: str = "granularity"
) -> BucketGrid:
    """Buckets of `granularity` aligned in `zone` covering [start, end); the first and last may be partial."""
    step = checked_step(start_us, end_us, granularity, max_points=max_points, field=field)
    labels = tuple(_labels(start_us, end_us, granularity, step, zone)) or (_local_floor(start_us, granularity, zone),)
    return BucketGrid((start_us, *labels[1:], end_us), labels)


def bucket_windows(
    start_us: int, end_us: int, granularity: int, zone: ZoneInfo, *, max_points: int, per_window: int
) -> Iterator[BucketGrid]:
    """`bucket_grid`'s buckets, `per_window` at a time, built only as each window is asked for: a long
    export never holds (or builds at once) more than one window of its grid. The bucket count is checked
    at once (INVALID_ARGUMENT), before the first window is asked for."""
    step = checked_step(start_us, end_us, granularity, max_points=max_points)
    return _windows(_labels(start_us, end_us, granularity, step, zone), start_us, end_us, per_window)


def _windows(labels: Iterator[int], start_us: int, end_us: int, per_window: int) -> Iterator[BucketGrid]:
    window = list(islice(labels, per_window))
    first_bound = start_us
    while window:
        following = list(islice(labels, per_window))
        last_bound = following[0] if following else end_us
        yield BucketGrid((first_bound, *window[1:], last_bound), tuple(window))
        first_bound, window = last_bound, following


def _to_datetime(value_us: int, zone: ZoneInfo) -> datetime:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value_us)).astimezone(zone)


def _to_us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _local_floor(value_us: int, granularity: int, zone: ZoneInfo) -> int:
    """The start of the local bucket holding the instant `value_us`."""
    local = _to_datetime(value_us, zone)
    if granularity == pb.GRANULARITY_DAY:
        # Local midnight of that date; resolved afresh, since the offset at midnight may differ (DST).
        return _to_us(datetime(local.year, local.month, local.day, tzinfo=zone))
    minutes: int = {pb.GRANULARITY_MINUTE: 1, pb.GRANULARITY_FIVE_MINUTES: 5, pb.GRANULARITY_HOUR: 60}[granularity]  # type: ignore[index]
    minute_of_day = local.hour * 60 + local.minute
    floored = minute_of_day - minute_of_day % minutes
    # Same date and fold as `local`: within an hour that repeats at a DST change, the offset is kept.
    aligned = local.replace(hour=floored // 60, minute=floored % 60, second=0, microsecond=0)
    return _to_us(aligned)


def _next_boundary(boundary: int, granularity: int, step: int, zone: ZoneInfo) -> int:
    if granularity == pb.GRANULARITY_DAY:
        local = _to_datetime(boundary, zone).date() + timedelta(days=1)
        return _to_us(datetime(local.year, local.month, local.day, tzinfo=zone))
    candidate = _local_floor(boundary + step, granularity, zone)
    # An offset change that is not a multiple of the step (Lord Howe's 30 minutes) must not go backwards.
    return candidate if candidate > boundary else boundary + step
