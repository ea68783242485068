"""Tests of the fixed log-scale latency histogram."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.histogram import (
    BUCKET_COUNT,
    bucket_bounds_us,
    bucket_index,
    bucket_upper_bounds_ms,
    quantile,
    relative_bucket_error,
)

# 1 ms .. just under 10^6 ms: the range where bucket bounds are finite and relative error is bounded.
_BOUNDED_US = st.integers(min_value=1_000, max_value=999_999_999)


def test_layout_is_eight_buckets_per_decade_from_one_millisecond() -> None:
    assert BUCKET_COUNT == 50
    assert len(bucket_upper_bounds_ms) == 50
    assert bucket_upper_bounds_ms[0] == 1.0
    assert bucket_upper_bounds_ms[8] == pytest.approx(10.0)
    assert bucket_upper_bounds_ms[48] == pytest.approx(1_000_000.0)
    assert math.isinf(bucket_upper_bounds_ms[49])


@pytest.mark.parametrize(
    ("value_us", "index"),
    [
        (-5, 0),
        (0, 0),
        (999, 0),
        (1_000, 1),
        (9_999, 8),
        (10_000, 9),
        (99_999_999, 40),
        (100_000_000, 41),
        (999_999_999, 48),
        (1_000_000_000, 49),
        (10**15, 49),
    ],
)
def test_decade_boundaries_fall_in_the_upper_bucket(value_us: int, index: int) -> None:
    assert bucket_index(value_us) == index


@given(st.integers(min_value=-10, max_value=10**13), st.integers(min_value=0, max_value=10**13))
def test_bucket_index_is_monotonic(value_us: int, step: int) -> None:
    assert bucket_index(value_us) <= bucket_index(value_us + step)


@given(st.integers(min_value=0, max_value=10**13))
def test_value_lies_within_its_bucket_bounds(value_us: int) -> None:
    index = bucket_index(value_us)
    value_ms = value_us / 1000
    lower_ms = 0.0 if index == 0 else bucket_upper_bounds_ms[index - 1]

    assert 0 <= index < BUCKET_COUNT
    # Float bounds are within an ulp of the exact integer bounds bucket_index uses.
    assert lower_ms * (1 - 1e-12) <= value_ms < bucket_upper_bounds_ms[index] * (1 + 1e-12)


def test_quantile_of_an_empty_histogram_is_none() -> None:
    assert quantile([0] * BUCKET_COUNT, 0.5) is None


def test_quantile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="within"):
        quantile([1] * BUCKET_COUNT, 1.5)


def test_sub_millisecond_and_overflow_values_have_bounded_estimates() -> None:
    counts = [0] * BUCKET_COUNT
    counts[bucket_index(300)] = 1
    counts[bucket_index(5 * 10**9)] = 1

    low = quantile(counts, 0.0)
    high = quantile(counts, 1.0)

    assert low is not None
    assert 0.0 <= low < 1.0
    assert high == 1_000_000.0


@given(st.lists(_BOUNDED_US, min_size=1, max_size=200), st.floats(min_value=0.0, max_value=1.0))
def test_quantile_is_within_bucket_error_of_the_exact_quantile(samples_us: list[int], q: float) -> None:
    counts = [0] * BUCKET_COUNT
    for value_us in samples_us:
        counts[bucket_index(value_us)] += 1
    ordered = sorted(samples_us)
    exact_ms = ordered[max(1, math.ceil(q * len(ordered))) - 1] / 1000

    estimate_ms = quantile(counts, q)

    assert estimate_ms is not None
    assert abs(estimate_ms - exact_ms) <= relative_bucket_error() * exact_ms


def test_bucket_bounds_are_exactly_where_bucket_index_changes() -> None:
    # Reporting buckets raw durations in SQL with these bounds; ingest buckets with bucket_index.
    assert bucket_bounds_us(0) == (None, 1000)
    assert bucket_bounds_us(BUCKET_COUNT - 1) == (1_000_000_000, None)
    for index in range(BUCKET_COUNT):
        lower, upper = bucket_bounds_us(index)
        if lower is not None:
            assert bucket_index(lower) == index
            assert bucket_index(lower - 1) == index - 1
        if upper is not None:
            assert bucket_index(upper - 1) == index
            assert bucket_index(upper) == index + 1
