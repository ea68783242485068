"""The planner reads each piece of a range from the coarsest source that answers it exactly."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from services.accounting.compaction import dirty_hours, dirty_hours_query
from services.errors import InvalidArgumentError
from services.reporting.planner import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    Source,
    bucket_grid,
    bucket_windows,
    coarse_rollups,
    plan_sources,
)
from services.storage import tables
from tests.storage.rows import add_gateway

T0 = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()) * 1_000_000


def test_whole_utc_days_come_from_daily_rollups_and_edges_from_finer_ones() -> None:
    start = T0 - 2 * HOUR_US - 3 * MINUTE_US - 5_000_000  # 21:56:55 the day before
    end = T0 + 3 * DAY_US + HOUR_US + 2 * MINUTE_US + 7  # 01:02:00.000007, three days later
    plan = plan_sources((start, end), dirty_hours_us=frozenset(), raw_only=False)
    assert plan.ranges[Source.RAW] == ((start, start + 5_000_000), (end - 7, end))
    assert plan.ranges[Source.MINUTE] == ((start + 5_000_000, T0 - 2 * HOUR_US), (T0 + 3 * DAY_US + HOUR_US, end - 7))
    assert plan.ranges[Source.HOUR] == ((T0 - 2 * HOUR_US, T0), (T0 + 3 * DAY_US, T0 + 3 * DAY_US + HOUR_US))
    assert plan.ranges[Source.DAY] == ((T0, T0 + 3 * DAY_US),)


def test_a_dirty_hour_is_read_from_minutes_and_its_day_from_hours() -> None:
    dirty = T0 + DAY_US + 5 * HOUR_US
    plan = plan_sources((T0, T0 + 3 * DAY_US), dirty_hours_us=frozenset({dirty}), raw_only=False)
    assert plan.ranges[Source.DAY] == ((T0, T0 + DAY_US), (T0 + 2 * DAY_US, T0 + 3 * DAY_US))
    assert plan.ranges[Source.HOUR] == ((T0 + DAY_US, dirty), (dirty + HOUR_US, T0 + 2 * DAY_US))
    assert plan.ranges[Source.MINUTE] == ((dirty, dirty + HOUR_US),)


def test_tag_filters_read_raw_events_only() -> None:
    plan = plan_sources((T0, T0 + 3 * DAY_US), dirty_hours_us=frozenset(), raw_only=True)
    assert plan.ranges == {Source.RAW: ((T0, T0 + 3 * DAY_US),)}


def test_hourly_buckets_never_use_daily_rollups() -> None:
    grid = bucket_grid(T0, T0 + 2 * DAY_US, pb.GRANULARITY_HOUR, ZoneInfo("UTC"), max_points=100)
    plan = plan_sources(grid.bounds_us, dirty_hours_us=frozenset(), raw_only=False)
    assert set(plan.ranges) == {Source.HOUR}


def test_kolkata_days_start_at_half_past_so_their_edges_come_from_minutes() -> None:
    zone = ZoneInfo("Asia/Kolkata")
    grid = bucket_grid(T0, T0 + 4 * DAY_US, pb.GRANULARITY_DAY, zone, max_points=100)
    assert grid.bounds_us[1] == T0 + 18 * HOUR_US + 30 * MINUTE_US  # local midnight = 18:30 UTC
    plan = plan_sources(grid.bounds_us, dirty_hours_us=frozenset(), raw_only=False)
    assert Source.DAY not in plan.ranges
    # The half hours either side of each local midnight, merged: 18:00-19:00 UTC every day.
    assert plan.ranges[Source.MINUTE] == tuple(
        (T0 + day * DAY_US + 18 * HOUR_US, T0 + day * DAY_US + 19 * HOUR_US) for day in range(4)
    )


def test_new_york_day_buckets_follow_daylight_saving() -> None:
    zone = ZoneInfo("America/New_York")
    start = int(datetime(2026, 3, 7, tzinfo=zone).timestamp()) * 1_000_000
    end = int(datetime(2026, 3, 10, tzinfo=zone).timestamp()) * 1_000_000
    grid = bucket_grid(start, end, pb.GRANULARITY_DAY, zone, max_points=100)
    widths = [b - a for a, b in zip(grid.bounds_us, grid.bounds_us[1:], strict=False)]
    assert widths == [24 * HOUR_US, 23 * HOUR_US, 24 * HOUR_US]  # 8 March 2026 springs forward


def test_too_many_buckets_name_the_granularity() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        bucket_grid(T0, T0 + 30 * DAY_US, pb.GRANULARITY_MINUTE, ZoneInfo("UTC"), max_points=10_000)
    assert caught.value.field == "granularity"


def test_reports_read_the_smallest_rollups_keyed_by_what_they_filter_or_group_by() -> None:
    model = coarse_rollups(frozenset({"environment_id", "gateway_key", "requested_model"}))
    narrow = coarse_rollups(frozenset({"requested_model", "status_class", "route"}))
    full = coarse_rollups(frozenset({"requested_model", "user_id"}))

    assert model == {
        Source.HOUR: tables.usage_rollup_1h_model,
        Source.DAY: tables.usage_rollup_1d_model,
        Source.FIVE_MINUTES: tables.usage_rollup_5m_model,
    }
    assert coarse_rollups(frozenset()) == model
    assert narrow == {
        Source.HOUR: tables.usage_rollup_1h_narrow,
        Source.DAY: tables.usage_rollup_1d_narrow,
        Source.FIVE_MINUTES: tables.usage_rollup_5m_narrow,
    }
    assert full == {Source.HOUR: tables.usage_rollup_1h, Source.DAY: tables.usage_rollup_1d}
    assert coarse_rollups(frozenset({"api_key_id", "environment_id"})) == {
        Source.HOUR: tables.usage_rollup_1h_key,
        Source.DAY: tables.usage_rollup_1d_key,
    }
    assert coarse_rollups(frozenset({"user_id"})) == {
        Source.HOUR: tables.usage_rollup_1h_user,
        Source.DAY: tables.usage_rollup_1d_user,
    }
    assert coarse_rollups(frozenset({"api_key_id", "user_id"})) == full
    with pytest.raises(ValueError, match="no rollup is keyed by"):
        coarse_rollups(frozenset({"error_message"}))


def test_five_minute_buckets_of_compacted_hours_come_from_five_minute_rollups_where_the_key_has_them() -> None:
    dirty = T0 + HOUR_US
    grid = bucket_grid(T0, T0 + 2 * HOUR_US, pb.GRANULARITY_FIVE_MINUTES, ZoneInfo("UTC"), max_points=100)
    with_fives = coarse_rollups(frozenset({"requested_model"}))
    plan = plan_sources(grid.bounds_us, dirty_hours_us=frozenset({dirty}), raw_only=False, coarse=with_fives)
    assert plan.ranges == {Source.FIVE_MINUTES: ((T0, dirty),), Source.MINUTE: ((dirty, dirty + HOUR_US),)}
    assert plan.table(Source.FIVE_MINUTES) is tables.usage_rollup_5m_model
    # By user (the full key has no five-minute rollups): minutes.
    by_user = coarse_rollups(frozenset({"user_id", "requested_model"}))
    plan = plan_sources(grid.bounds_us, dirty_hours_us=frozenset(), raw_only=False, coarse=by_user)
    assert plan.ranges == {Source.MINUTE: ((T0, T0 + 2 * HOUR_US),)}


def test_a_range_edge_is_read_by_minutes_up_to_five_minutes_then_by_five_minutes_up_to_the_hour() -> None:
    start = T0 - 18 * MINUTE_US - 5_000_000  # 23:41:55 the day before
    end = T0 + 2 * HOUR_US + 7 * MINUTE_US  # 02:07
    plan = plan_sources((start, end), dirty_hours_us=frozenset(), raw_only=False, coarse=coarse_rollups(frozenset()))
    assert plan.ranges == {
        Source.RAW: ((start, start + 5_000_000),),
        Source.MINUTE: ((T0 - 18 * MINUTE_US, T0 - 15 * MINUTE_US), (end - 2 * MINUTE_US, end)),
        Source.FIVE_MINUTES: ((T0 - 15 * MINUTE_US, T0), (T0 + 2 * HOUR_US, end - 2 * MINUTE_US)),
        Source.HOUR: ((T0, T0 + 2 * HOUR_US),),
    }


async def test_dirty_hours_are_found_one_probe_per_hour_within_the_range(engine: AsyncEngine) -> None:
    """Several dirty minutes in one hour count once; clean rows, and hours outside the range, not at all."""
    hour = T0 // 1_000_000
    # (minute offset from T0 in seconds, user, attempt_count, compacted_attempt_count)
    rows = [
        (0, "a", 5, 5),  # hour 0: clean
        (3 * 3600 + 60, "a", 2, 1),  # hour 3: dirty, three times
        (3 * 3600 + 120, "a", 1, 0),
        (3 * 3600 + 120, "b", 4, 0),
        (3 * 3600 + 180, "a", 3, 3),
        (7 * 3600 + 3540, "a", 1, 0),  # hour 7, its last minute
        (30 * 3600, "a", 1, 0),  # hour 30: outside the range below
    ]
    async with engine.begin() as connection:
        gateway_key = await add_gateway(connection)
        key = {name: "" for name in tables.ROLLUP_DIMENSIONS}
        await connection.execute(
            tables.usage_rollup_1m.insert(),
            [
                {
                    **key,
                    "bucket_start": hour + offset,
                    "environment_id": "prod",
                    "gateway_key": gateway_key,
                    "user_id": user,
                    "request_type": 0,
                    "credential_type": 0,
                    "status_class": 0,
                    "streaming": False,
                    "attempt_count": attempts,
                    "compacted_attempt_count": compacted,
                }
                for offset, user, attempts, compacted in rows
            ],
        )
    async with engine.connect() as connection:
        found = await dirty_hours(connection, T0, T0 + 24 * HOUR_US)
        from_the_middle = await dirty_hours(connection, T0 + 4 * HOUR_US + 5 * MINUTE_US, T0 + 24 * HOUR_US)
        everything = [int(h) for (h,) in await connection.execute(dirty_hours_query(0, 2**62))]
    assert found == {T0 + 3 * HOUR_US, T0 + 7 * HOUR_US}
    assert from_the_middle == {T0 + 7 * HOUR_US}
    assert everything == [hour + 3 * 3600, hour + 7 * 3600, hour + 30 * 3600]


YEAR_1_US = int(datetime(1, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
YEAR_9999_US = int(datetime(9999, 12, 31, tzinfo=UTC).timestamp()) * 1_000_000


def test_a_range_of_ten_thousand_years_plans_one_daily_range_per_stretch_between_dirty_days() -> None:
    """Issue 17 class 2: planning visited every day of the range (3.3 s for year 1 to 9999); the clean days
    between dirty ones are one range each, and the plan still covers the range exactly once."""
    dirty = frozenset({T0 + 5 * HOUR_US, T0 + 40 * DAY_US + 23 * HOUR_US, YEAR_1_US + 3 * HOUR_US})
    plan = plan_sources((YEAR_1_US, YEAR_9999_US), dirty_hours_us=dirty, raw_only=False)
    dirty_days = sorted(hour - hour % DAY_US for hour in dirty)
    assert plan.ranges[Source.DAY] == (
        (dirty_days[0] + DAY_US, dirty_days[1]),
        (dirty_days[1] + DAY_US, dirty_days[2]),
        (dirty_days[2] + DAY_US, YEAR_9999_US),
    )
    assert plan.ranges[Source.MINUTE] == tuple((hour, hour + HOUR_US) for hour in sorted(dirty))
    pieces = sorted(piece for ranges in plan.ranges.values() for piece in ranges)
    assert pieces[0][0] == YEAR_1_US
    assert pieces[-1][1] == YEAR_9999_US
    assert all(left[1] == right[0] for left, right in itertools.pairwise(pieces))


@pytest.mark.parametrize("zone_name", ["UTC", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe"])
@pytest.mark.parametrize(
    "granularity",
    [pb.GRANULARITY_MINUTE, pb.GRANULARITY_FIVE_MINUTES, pb.GRANULARITY_HOUR, pb.GRANULARITY_DAY],
)
def test_bucket_windows_are_the_grid_cut_into_consecutive_windows(
    zone_name: str, granularity: pb.Granularity.ValueType
) -> None:
    zone = ZoneInfo(zone_name)
    rng = random.Random(f"{zone_name}{granularity}")
    step_us = {
        pb.GRANULARITY_MINUTE: MINUTE_US,
        pb.GRANULARITY_FIVE_MINUTES: 5 * MINUTE_US,
        pb.GRANULARITY_HOUR: HOUR_US,
    }
    for _ in range(10):
        start = T0 + rng.randint(-400 * DAY_US, 400 * DAY_US)
        end = start + rng.randint(1, 1_500 * step_us.get(granularity, DAY_US))
        grid = bucket_grid(start, end, granularity, zone, max_points=100_000)
        windows = list(
            bucket_windows(start, end, granularity, zone, max_points=100_000, per_window=rng.randint(1, 500))
        )
        assert tuple(label for window in windows for label in window.labels_us) == grid.labels_us
        assert (*(bound for window in windows for bound in window.bounds_us[:-1]), end) == grid.bounds_us


def test_bucket_windows_refuse_too_many_buckets_before_building_any() -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        bucket_windows(YEAR_1_US, YEAR_9999_US, pb.GRANULARITY_MINUTE, ZoneInfo("UTC"), max_points=10, per_window=5)
    assert refused.value.field == "granularity"
