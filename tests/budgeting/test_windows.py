"""Calendar windows roll over exactly at local midnight, across DST changes, weeks and months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgeting.windows import (
    Period,
    UnknownTimeZoneError,
    Window,
    time_zone,
    window_after,
    window_at,
    window_before,
)


def _s(text: str) -> int:
    """Unix seconds of an ISO instant with its offset, e.g. '2026-03-29T00:00+01:00'."""
    return int(datetime.fromisoformat(text).timestamp())


@pytest.mark.parametrize(
    ("zone", "day", "start", "end", "hours"),
    [
        # Spring forward: 02:00 -> 03:00 local; the day lasts 23 hours.
        ("Europe/Berlin", "2026-03-29T12:00+02:00", "2026-03-29T00:00+01:00", "2026-03-30T00:00+02:00", 23),
        # Fall back: 03:00 -> 02:00 local; 25 hours.
        ("Europe/Berlin", "2026-10-25T12:00+01:00", "2026-10-25T00:00+02:00", "2026-10-26T00:00+01:00", 25),
        ("America/New_York", "2026-03-08T12:00-04:00", "2026-03-08T00:00-05:00", "2026-03-09T00:00-04:00", 23),
        ("America/New_York", "2026-11-01T12:00-05:00", "2026-11-01T00:00-04:00", "2026-11-02T00:00-05:00", 25),
        # Midnight does not exist (00:00 -> 01:00): the day starts when the gap ends.
        ("America/Santiago", "2024-09-08T12:00-03:00", "2024-09-08T01:00-03:00", "2024-09-09T00:00-03:00", 23),
    ],
)
def test_a_day_window_starts_at_local_midnight_across_dst(
    zone: str, day: str, start: str, end: str, hours: int
) -> None:
    window = window_at(Period.DAY, time_zone(zone), _s(day))
    assert window == Window(_s(start), _s(end))
    assert window.end_s is not None
    assert window.end_s - window.start_s == hours * 3600


def test_the_window_rolls_over_at_the_exact_second() -> None:
    berlin = time_zone("Europe/Berlin")
    midnight = _s("2026-03-30T00:00+02:00")
    before = window_at(Period.DAY, berlin, midnight - 1)
    after = window_at(Period.DAY, berlin, midnight)
    assert before.end_s == midnight == after.start_s
    assert window_after(Period.DAY, berlin, before) == after
    assert window_before(Period.DAY, berlin, after) == before


def test_a_week_runs_monday_to_monday_and_a_month_first_to_first() -> None:
    new_york = time_zone("America/New_York")
    # Sunday 2026-03-08 (the DST day) belongs to the week that started Monday 2026-03-02.
    week = window_at(Period.WEEK, new_york, _s("2026-03-08T23:59:59-04:00"))
    assert week == Window(_s("2026-03-02T00:00-05:00"), _s("2026-03-09T00:00-04:00"))
    assert week.end_s is not None
    assert week.end_s - week.start_s == 7 * 86_400 - 3600
    december = window_at(Period.MONTH, new_york, _s("2026-12-31T23:59:59-05:00"))
    assert december == Window(_s("2026-12-01T00:00-05:00"), _s("2027-01-01T00:00-05:00"))
    february = window_at(Period.MONTH, time_zone("Europe/Berlin"), _s("2028-02-29T12:00+01:00"))
    assert february == Window(_s("2028-02-01T00:00+01:00"), _s("2028-03-01T00:00+01:00"))


def test_a_month_window_in_utc_is_the_calendar_month() -> None:
    march = window_at(Period.MONTH, time_zone(""), _s("2026-03-15T08:00+00:00"))
    assert march == Window(_s("2026-03-01T00:00+00:00"), _s("2026-04-01T00:00+00:00"))


def test_a_total_window_spans_all_time() -> None:
    window = window_at(Period.TOTAL, time_zone("Asia/Tokyo"), _s("2026-03-15T08:00+00:00"))
    assert window == Window(0, None)
    assert window.contains(10**12)
    assert window_after(Period.TOTAL, time_zone("UTC"), window) is None


def test_an_unknown_time_zone_is_named() -> None:
    with pytest.raises(UnknownTimeZoneError, match="'Mars/Olympus' is not an IANA time zone"):
        time_zone("Mars/Olympus")


_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "America/Santiago", "Australia/Lord_Howe", "Asia/Kolkata"]


@given(
    zone=st.sampled_from(_ZONES),
    period=st.sampled_from([Period.DAY, Period.WEEK, Period.MONTH]),
    moment=st.integers(min_value=_s("1990-01-01T00:00+00:00"), max_value=_s("2060-01-01T00:00+00:00")),
)
def test_windows_hold_their_instant_abut_and_start_on_their_first_local_day(
    zone: str, period: Period, moment: int
) -> None:
    tz = time_zone(zone)
    window = window_at(period, tz, moment)
    assert window.contains(moment)
    following = window_after(period, tz, window)
    assert following is not None
    assert following.start_s == window.end_s
    assert window_before(period, tz, following) == window
    local_start = datetime.fromtimestamp(window.start_s, tz=tz)
    # Local midnight, or the end of a gap that swallowed it (never later than 01:00 in these zones' history).
    assert local_start.time() <= (datetime.min + timedelta(hours=1)).time()
    if period is Period.WEEK:
        assert local_start.weekday() == 0
    if period is Period.MONTH:
        assert local_start.day == 1
    one_second_before = datetime.fromtimestamp(window.start_s - 1, tz=tz)
    assert one_second_before.date() < local_start.date()
    assert datetime.fromtimestamp(moment, tz=UTC) >= datetime.fromtimestamp(window.start_s, tz=UTC)
