"""The usage CLI's pure parts: time-range shortcuts in a time zone, and the terminal charts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import typer

from services.cli.charts import bar, sparkline
from services.cli.usage.filters import time_range

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)


def test_today_starts_at_local_midnight() -> None:
    start, end = time_range("today", None, None, "America/New_York", NOW)
    assert (start, end) == (datetime(2026, 11, 22, 5, 0, tzinfo=UTC), NOW)  # 22 Nov 00:00 EST


def test_shortcuts_count_back_from_the_end() -> None:
    assert time_range("7d", None, None, "UTC", NOW) == (NOW - timedelta(days=7), NOW)
    assert time_range("1h", None, "2026-11-20T12:00", "Asia/Kolkata", NOW) == (
        datetime(2026, 11, 20, 5, 30, tzinfo=UTC),
        datetime(2026, 11, 20, 6, 30, tzinfo=UTC),
    )


def test_custom_range_is_read_in_the_time_zone_unless_it_has_an_offset() -> None:
    start, end = time_range("today", "2026-11-01", "2026-11-02T00:00+00:00", "Asia/Kolkata", NOW)
    assert (start, end) == (datetime(2026, 10, 31, 18, 30, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))


def test_an_unknown_shortcut_is_a_usage_error() -> None:
    with pytest.raises(typer.Exit) as caught:
        time_range("fortnight", None, None, "UTC", NOW)
    assert caught.value.exit_code == 2


def test_charts_scale_to_their_data() -> None:
    assert sparkline([0, 7, 14]) == "▁▅█"
    assert sparkline([5, 5]) == "▁▁"
    assert bar(50, 100, 4) == "██"
    assert bar(0, 100, 4) == ""
