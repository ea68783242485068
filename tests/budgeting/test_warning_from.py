"""warning_from is state_of's rule solved once: the least usage whose state is not OK."""

from __future__ import annotations

from budgeting.decision import State, state_of, warning_from


def test_warning_from_is_where_state_of_leaves_ok_for_every_limit_and_threshold() -> None:
    for limit in (*range(1, 120), 999, 1_000, 10**12 + 7):
        for thresholds in ((80, 100), (1,), (50, 90), (100,), (150, 200), (33,), (1000,), ()):
            start = warning_from(limit, thresholds)
            for used in {0, max(0, start - 2), max(0, start - 1), start, start + 1, limit}:
                assert (state_of(used, limit, thresholds) is not State.OK) == (used >= start), (limit, thresholds, used)
