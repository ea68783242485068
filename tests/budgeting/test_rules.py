"""Scopes match with AND over their selectors; decisions and thresholds in integer arithmetic."""

from __future__ import annotations

import pytest

from budgeting.decision import (
    BudgetRule,
    Metric,
    Mode,
    State,
    Verdict,
    WindowFigures,
    check_thresholds,
    crossed,
    decide,
    newly_crossed,
    state_of,
)
from budgeting.scope import RequestAttributes, Scope, ScopeError
from budgeting.windows import Period, Window

_REQUEST = RequestAttributes(
    environment_id="prod",
    gateway_id="gw-1",
    api_key_id="key-1",
    user_id="alice",
    requested_model="gpt-4o",
    resolved_model="gpt-4o-2024-08-06",
    provider="openai",
    route="/v1/chat/completions",
    tags={"team": "search", "feature": "summaries"},
)


@pytest.mark.parametrize(
    ("scope", "matches"),
    [
        (Scope(), True),
        (Scope(environment_id="prod"), True),
        (Scope(environment_id="dev"), False),
        (Scope(environment_id="prod", gateway_id="gw-1"), True),
        (Scope(environment_id="prod", gateway_id="gw-2"), False),
        (Scope(requested_model="gpt-4o", tags=(("team", "search"),)), True),
        (Scope(requested_model="gpt-4o", tags=(("team", "ads"),)), False),
        (Scope(tags=(("team", "search"), ("feature", "summaries"))), True),
        (Scope(tags=(("team", "search"), ("feature", "other"))), False),
        (Scope(tags=(("missing", ""),)), False),
        (Scope(environment_id="prod", api_key_id="key-1", user_id="alice", provider="openai"), True),
        (Scope(environment_id="prod", api_key_id="key-1", user_id="bob"), False),
        (Scope(resolved_model="gpt-4o"), False),
        (Scope(route="/v1/chat/completions"), True),
        (Scope(requested_model="GPT-4O"), False),
    ],
)
def test_every_selector_that_is_set_must_match(scope: Scope, matches: bool) -> None:
    assert scope.matches(_REQUEST) is matches
    row = {
        name: getattr(_REQUEST, name)
        for name in ("api_key_id", "user_id", "requested_model", "resolved_model", "provider", "route")
    }
    per_event = scope.covers_gateway("prod", "gw-1") and scope.matches_event(row, dict(_REQUEST.tags))
    assert per_event is matches


def test_a_scope_names_the_selector_it_cannot_take() -> None:
    with pytest.raises(ScopeError, match=r"scope.gateway_id: needs scope.environment_id"):
        Scope.of(gateway_id="gw-1")
    with pytest.raises(ScopeError, match=r"scope.tags: at most 16"):
        Scope.of(environment_id="prod", tags={f"k{i}": "v" for i in range(17)})
    with pytest.raises(ScopeError, match=r"scope.user_id: must be at most 256"):
        Scope.of(user_id="u" * 257)
    assert Scope.of(environment_id="prod", tags={"b": "2", "a": "1"}).tags == (("a", "1"), ("b", "2"))
    assert Scope.of(environment_id="prod", requested_model="gpt-4o", tags={"team": "search"}).describe() == (
        "environment prod, model gpt-4o, tag team=search"
    )


def test_thresholds_are_crossed_in_integer_arithmetic() -> None:
    assert crossed(799_999, 1_000_000, (80, 100)) == ()
    assert crossed(800_000, 1_000_000, (80, 100)) == (80,)
    assert newly_crossed(700_000, 1_000_001, 1_000_000, (50, 80, 100, 150)) == (80, 100)
    assert newly_crossed(1_000_000, 1_000_001, 1_000_000, (80, 100)) == ()
    # Near int64: no float rounding.
    limit = 2**62
    assert crossed(limit - 1, limit, (100,)) == ()
    assert state_of(limit, limit, (80, 100)) is State.EXCEEDED
    assert state_of(limit // 10 * 9, limit, (80, 100)) is State.WARNING


def test_thresholds_are_checked() -> None:
    assert check_thresholds([]) == (80, 100)
    with pytest.raises(ValueError, match="strictly ascending"):
        check_thresholds([80, 50])
    with pytest.raises(ValueError, match="1-1000 percent"):
        check_thresholds([0])
    with pytest.raises(ValueError, match="at most 10"):
        check_thresholds(list(range(1, 12)))


def _figures(budget_id: str, mode: Mode, used: int, *, limit: int = 100, reserved: int = 0) -> WindowFigures:
    rule = BudgetRule(
        budget_id=budget_id,
        display_name=budget_id,
        scope=Scope(environment_id="prod"),
        metric=Metric.SPEND,
        limit=limit,
        period=Period.DAY,
        time_zone="UTC",
        mode=mode,
        thresholds=(80, 100),
    )
    return WindowFigures(rule, Window(0, 86_400), used, reserved)


def test_a_hard_stop_at_its_limit_denies_and_a_warn_only_one_warns() -> None:
    over_warn = _figures("b-warn", Mode.WARN_ONLY, 150)
    near_hard = _figures("b-hard", Mode.HARD_STOP, 85)
    decision = decide([over_warn, near_hard])
    assert decision.verdict is Verdict.WARN
    assert {f.rule.budget_id for f in decision.warned_by} == {"b-warn", "b-hard"}
    full_hard = _figures("a-hard", Mode.HARD_STOP, 100)
    denied = decide([over_warn, full_hard])
    assert denied.verdict is Verdict.DENY
    assert denied.denied_by is full_hard
    assert decide([_figures("ok", Mode.HARD_STOP, 10)]).verdict is Verdict.ALLOW
    assert decide([]).verdict is Verdict.ALLOW


def test_an_estimate_that_would_go_over_a_hard_stop_is_denied_and_reservations_count() -> None:
    hard = _figures("hard", Mode.HARD_STOP, 60, reserved=30)
    assert hard.remaining == 10
    assert decide([hard], estimate={Metric.SPEND: 10}).verdict is Verdict.WARN
    assert decide([hard], estimate={Metric.SPEND: 11}).verdict is Verdict.DENY
    assert decide([hard], estimate={Metric.TOKENS: 10_000}).verdict is Verdict.WARN
    assert hard.retry_after_s(86_400 - 0.5) == 1
    assert hard.retry_after_s(0) == 86_400
