"""The agent's fast check is the one admission rule: over any run of usage, reservations, releases, rejections and
snapshots, each decision equals budgeting.decision.decide over the view's figures before the check, and the figures
a decision reports are the view's once it decided (the view works headroom out by linearity and reuses figures
while none changed)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from budgeting.decision import Metric, Verdict, WindowFigures, decide
from budgeting.windows import Window
from gateway_agent import CheckRequest, UsageEstimate
from gateway_agent.budget_decision import BudgetFigures
from gateway_agent.budget_rules import rule_of
from gateway_agent.budget_view import BudgetView
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from tests.gateway_agent.budget_snapshots import MODEL, budget, priced_config, snapshot, usage_event

NOW = 1_790_000_000.0
BUDGETS = (
    budget("hard-a", limit=10_000, thresholds=(50, 100)),
    budget("hard-b", limit=6_000),
    budget("soft-c", limit=4_000, mode=budget_pb.MODE_WARN_ONLY, thresholds=(25, 75)),
    budget("soft-d", limit=9_000, mode=budget_pb.MODE_WARN_ONLY),
)
LEASED = "hard-b"

operations = st.lists(
    st.one_of(
        st.tuples(st.just("check"), st.integers(min_value=0, max_value=1_500)),
        st.tuples(st.just("plain"), st.none()),
        st.tuples(st.just("usage"), st.integers(min_value=0, max_value=1_500)),
        st.tuples(st.just("settle"), st.integers(min_value=0, max_value=1_500)),
        st.tuples(st.just("release"), st.none()),
        st.tuples(st.just("reject"), st.none()),
        st.tuples(st.just("snapshot"), st.integers(min_value=0, max_value=5_000)),
    ),
    max_size=40,
)


def expected_verdict(before: tuple[BudgetFigures, ...], estimate: int | None) -> tuple[Verdict, str]:
    """What budgeting.decision.decide says over the figures before the check."""
    windows = [window_figures(figures) for figures in before]
    amounts = None if estimate is None else {Metric.SPEND: estimate, Metric.TOKENS: 0, Metric.REQUESTS: 1}
    verdict = decide(windows, estimate=amounts)
    return verdict.verdict, "" if verdict.denied_by is None else verdict.denied_by.rule.budget_id


def window_figures(figures: BudgetFigures) -> WindowFigures:
    rule = rule_of(figures.budget)
    assert rule is not None
    return WindowFigures(
        rule=rule,
        window=Window(figures.window_start_s, figures.window_end_s),
        used=figures.used,
        reserved=figures.reserved,
        own=figures.pending_used,
        allowance=figures.lease_allowance,
    )


@settings(max_examples=150, deadline=None)
@given(operations=operations, lease=st.integers(min_value=0, max_value=6_000))
def test_every_decision_is_the_admission_rule_and_reports_the_figures_it_left(
    operations: list[tuple[str, int | None]], lease: int
) -> None:
    view = BudgetView(clock=lambda: NOW)
    view.apply_config(priced_config())
    server = {item.budget_id: 0 for item in BUDGETS}

    def apply_snapshot(through: int) -> None:
        view.apply_snapshot(
            snapshot([(item, server[item.budget_id]) for item in BUDGETS], now_s=NOW, through=through,
                     leases=[(LEASED, lease, 2)])
        )  # fmt: skip

    apply_snapshot(0)
    sequence = 0
    open_ids: list[str] = []
    unacked: list[int] = []
    for kind, amount in operations:
        if kind in ("check", "plain"):
            estimate = amount if kind == "check" else None
            request = CheckRequest(
                requested_model=MODEL, estimate=None if estimate is None else UsageEstimate(cost_micros=estimate)
            )
            before = view.budgets()
            decision = view.check(request)
            assert (decision.verdict, decision.denied_by_budget_id) == expected_verdict(before, estimate)
            if decision.reservation_id:
                open_ids.append(decision.reservation_id)
            # The figures reported are the view's own once decided (this request's reservation included).
            assert decision.budgets == view.budgets()
        elif kind in ("usage", "settle"):
            sequence += 1
            event = usage_event(sequence, cost_micros=amount or 0, now_s=NOW)
            if kind == "settle" and open_ids:
                event.reservation_id = open_ids.pop(0)
            view.count_event(event)
            unacked.append(sequence)
        elif kind == "release" and open_ids:
            assert view.release_reservation(open_ids.pop())
        elif kind == "reject" and unacked:
            view.acknowledged([], [unacked.pop()])
        elif kind == "snapshot":
            # The control plane catches up with every own event so far, plus other gateways' usage.
            for item in BUDGETS:
                server[item.budget_id] = sum(b.used for b in view.budgets() if b.budget_id == item.budget_id) + (
                    amount or 0
                ) // len(BUDGETS)
            apply_snapshot(sequence)
            unacked.clear()
