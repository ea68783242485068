"""The included set of a gateway's sequence numbers: ranges merge, fold into the watermark, and stay bounded by
dropping the lowest (which only makes an agent count those events twice: it denies early, never overspends)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.budget.included import MAX_INCLUDED_RANGES, IncludedSet


def test_a_range_above_the_watermark_is_kept_until_the_gap_below_it_fills() -> None:
    later_first = IncludedSet().adding(batches=[(11, 20)])
    assert (later_first.through, later_first.ranges) == (0, ((11, 20),))
    assert not later_first.includes(10)
    assert later_first.includes(15)
    both = later_first.adding(batches=[(1, 10)])
    assert (both.through, both.ranges) == (20, ())


def test_touching_ranges_merge_and_the_promise_folds_what_it_reaches() -> None:
    merged = IncludedSet().adding(batches=[(5, 7), (8, 9), (20, 30)])
    assert merged.ranges == ((5, 9), (20, 30))
    promised = merged.adding(through=4)
    assert (promised.through, promised.ranges) == (9, ((20, 30),))
    assert promised.adding(through=25) == IncludedSet(30)


def test_the_stored_form_reads_back_the_same_set() -> None:
    included = IncludedSet(3, ((5, 9), (20, 30)))
    assert IncludedSet.decode(3, included.encode()) == included
    assert IncludedSet.decode(7, "") == IncludedSet(7)


def test_beyond_the_bound_the_lowest_ranges_are_dropped() -> None:
    gaps = [(2 * i + 10, 2 * i + 10) for i in range(MAX_INCLUDED_RANGES + 5)]
    bounded = IncludedSet().adding(batches=gaps)
    assert len(bounded.ranges) == MAX_INCLUDED_RANGES
    assert bounded.ranges[0] == gaps[5]
    assert bounded.ranges[-1] == gaps[-1]
    # Dropped ranges are no longer included: an agent counts those events itself (twice, so conservatively).
    assert not bounded.includes(gaps[0][0])


@given(
    st.lists(st.tuples(st.integers(1, 200), st.integers(0, 20)), max_size=40),
    st.lists(st.integers(0, 200), max_size=5),
)
def test_the_set_holds_exactly_the_union_of_what_was_added(batches: list[tuple[int, int]], promises: list[int]) -> None:
    ranges = [(first, first + length) for first, length in batches]
    included = IncludedSet()
    for promise in promises:
        included = included.adding(through=promise)
    included = included.adding(batches=ranges)
    watermark = max(promises, default=0)
    expected = {n for first, last in ranges for n in range(first, last + 1)} | set(range(1, watermark + 1))
    assert {n for n in range(1, 240) if included.includes(n)} == expected
    assert all(first > included.through + 1 for first, _ in included.ranges)
    assert all(a[1] + 1 < b[0] for a, b in zip(included.ranges, included.ranges[1:], strict=False))
