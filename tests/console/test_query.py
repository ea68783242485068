"""A view's URL as a question: presets in a zone end on whole minutes or hours, bad values name the parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from starlette.datastructures import ImmutableMultiDict

from services.console.query import ViewQuery
from services.errors import InvalidArgumentError

NOW = datetime(2026, 12, 3, 17, 42, 31, 250_000, tzinfo=UTC)


def _query(**params: str) -> ViewQuery:
    return ViewQuery.from_params(ImmutableMultiDict(list(params.items())))


@pytest.mark.parametrize(
    ("preset", "start", "end"),
    [
        ("1h", datetime(2026, 12, 3, 16, 43, tzinfo=UTC), datetime(2026, 12, 3, 17, 43, tzinfo=UTC)),
        ("3d", datetime(2026, 11, 30, 18, tzinfo=UTC), datetime(2026, 12, 3, 18, tzinfo=UTC)),
        ("30d", datetime(2026, 11, 3, 18, tzinfo=UTC), datetime(2026, 12, 3, 18, tzinfo=UTC)),
        ("today", datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 3, 18, tzinfo=UTC)),
    ],
)
def test_presets_end_on_a_whole_minute_or_hour_and_include_now(preset: str, start: datetime, end: datetime) -> None:
    begin, finish = _query(range=preset).bounds(NOW)
    assert (begin, finish) == (start, end)
    assert begin <= NOW < finish


def test_today_starts_at_midnight_in_the_chosen_zone() -> None:
    begin, _ = _query(range="today", tz="Asia/Kolkata").bounds(NOW)  # 23:12 there: its day began 18:30 UTC
    assert begin == datetime(2026, 12, 2, 18, 30, tzinfo=UTC)


def test_a_custom_range_is_taken_as_typed_in_the_zone() -> None:
    query = _query(range="custom", **{"from": "2026-12-01T08:00", "to": "2026-12-01T09:30:15"}, tz="Europe/Paris")
    assert query.bounds(NOW) == (datetime(2026, 12, 1, 7, tzinfo=UTC), datetime(2026, 12, 1, 8, 30, 15, tzinfo=UTC))
    assert query.usage_filter(NOW).end_time.ToDatetime(UTC) - query.usage_filter(NOW).start_time.ToDatetime(
        UTC
    ) == timedelta(hours=1, minutes=30, seconds=15)


def test_the_url_keeps_only_what_differs_from_the_defaults() -> None:
    query = _query(range="7d", env="prod", by="user", top="10")
    assert query.url("/usage") == "/usage?range=7d&by=user&env=prod"
    assert query.without("env", "prod").url("/usage") == "/usage?range=7d&by=user"


def test_too_many_filter_values_are_refused_as_the_rpcs_refuse_them() -> None:
    pairs = [("tag", f"k{index}=v") for index in range(17)]
    with pytest.raises(InvalidArgumentError, match=r"^tag: give at most 16 values"):
        ViewQuery.from_params(ImmutableMultiDict(pairs))
