"""The admission rule stated as headroom: `refuses` is exactly its plain statement, and headroom moves one for one
with committed usage (what lets agents keep it up to date instead of working it out per check)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from budgeting.decision import headroom, needed, refuses

amounts = st.integers(min_value=0, max_value=10**13)
allowances = st.none() | amounts


@given(committed=amounts, limit=st.integers(min_value=1, max_value=10**13), expected=amounts, own=amounts,
       allowance=allowances)  # fmt: skip
def test_refuses_is_the_rule_as_written(
    committed: int, limit: int, expected: int, own: int, allowance: int | None
) -> None:
    over_window = committed >= limit or committed + expected > limit
    over_lease = allowance is not None and (own >= allowance or own + expected > allowance)
    assert refuses(committed, limit, expected, own, allowance) == (over_window or over_lease)


@given(committed=amounts, limit=amounts, own=amounts, allowance=allowances, delta=st.integers(-(10**12), 10**12))
def test_headroom_moves_one_for_one_with_own_usage(
    committed: int, limit: int, own: int, allowance: int | None, delta: int
) -> None:
    before = headroom(committed, limit, own, allowance)
    assert headroom(committed + delta, limit, own + delta, allowance) == before - delta


def test_a_window_at_its_limit_refuses_even_a_request_expected_to_add_nothing() -> None:
    assert needed(0) == 1
    assert refuses(committed=100, limit=100, expected=0)
    assert not refuses(committed=99, limit=100, expected=1)
    assert refuses(committed=99, limit=100, expected=2)
