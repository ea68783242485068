"""Budgets of a snapshot as the agent enforces them: the rule, the current window, the server's figure for it and
this gateway's lease (translated from protobuf once per snapshot, not per check)."""

from __future__ import annotations

from typing import Final

import structlog

from budgeting.decision import BudgetRule, Metric, Mode, check_thresholds, headroom, needed, warning_from
from budgeting.scope import Scope
from budgeting.windows import Period, UnknownTimeZoneError, Window, time_zone, window_at
from meterwire.budget.v1 import budget_service_pb2 as budget_pb

log = structlog.get_logger("meterwire.agent.budgets")

_METRICS: Final = {int(m): m for m in Metric}
_PERIODS: Final = {int(p): p for p in Period}
_MODES: Final = {int(m): m for m in Mode}
_METRIC_INDEX: Final = {Metric.SPEND: 0, Metric.TOKENS: 1, Metric.REQUESTS: 2}


class BudgetEntry:
    """One budget in force: its rule and window (fixed per snapshot and window), and the mutable local figures
    (changed only under the BudgetView's lock).

    The admission rule's headroom moves one for one with this gateway's own usage and reservations
    (budgeting.decision.headroom), so it is worked out once per entry without them (`room`) and a check subtracts
    `pending + reserved`: nothing derived has to be kept in step as usage and reservations change.
    """

    __slots__ = (
        "allowance",
        "amount_index",
        "budget",
        "budget_id",
        "hard",
        "limit",
        "metric_index",
        "pending",
        "quiet_below",
        "reserved",
        "room",
        "rule",
        "server_used",
        "sharing_gateways",
        "warn_from",
        "warn_room",
        "window",
    )

    def __init__(
        self,
        *,
        budget: budget_pb.Budget,
        rule: BudgetRule,
        window: Window,
        server_used: int,
        allowance: int | None,
        sharing_gateways: int,
    ) -> None:
        self.budget = budget
        self.budget_id = rule.budget_id
        self.rule = rule
        self.hard = rule.mode is Mode.HARD_STOP
        self.limit = rule.limit
        self.metric_index = _METRIC_INDEX[rule.metric]
        """Where the budget's metric is in a (spend, tokens, requests) triple."""
        self.amount_index = self.metric_index if self.hard else 3 + self.metric_index
        """Where it is in a request's (hard-stop triple, warn-only triple) of expected amounts."""
        self.warn_from = warning_from(rule.limit, rule.thresholds)
        """used + reserved from which the budget is past an alert threshold (WARN)."""
        self.window = window
        self.server_used = server_used
        self.allowance = allowance
        self.sharing_gateways = sharing_gateways
        self.pending = 0
        """This gateway's usage in the window that the snapshot does not include."""
        self.reserved = 0
        """Held by open reservations."""
        self.room = headroom(server_used, rule.limit, 0, allowance)
        """The headroom with no own usage or reservation: the headroom is `room - (pending + reserved)`."""
        self.warn_room = self.warn_from - server_used
        """Past an alert threshold once pending + reserved >= warn_room."""
        self.quiet_below = min(self.room - needed(0) + 1, self.warn_room)
        """While pending + reserved is below this, a request expected to add nothing is admitted with no warning."""


def rule_of(budget: budget_pb.Budget) -> BudgetRule | None:
    """The rule of a budget as the server sent it; None (logged) for one this agent cannot enforce."""
    metric, period, mode = _METRICS.get(budget.metric), _PERIODS.get(budget.period), _MODES.get(budget.mode)
    if metric is None or period is None or mode is None or budget.limit <= 0:
        log.warning("budget with an unknown metric, period, mode or limit; not enforced", budget=budget.budget_id)
        return None
    try:
        time_zone(budget.time_zone)
        thresholds = check_thresholds(list(budget.alert_threshold_percents))
    except (UnknownTimeZoneError, ValueError) as error:
        log.warning("budget not enforced", budget=budget.budget_id, error=str(error))
        return None
    return BudgetRule(
        budget_id=budget.budget_id,
        display_name=budget.display_name,
        scope=Scope.of_message(budget.scope),
        metric=metric,
        limit=int(budget.limit),
        period=period,
        time_zone=budget.time_zone,
        mode=mode,
        thresholds=thresholds,
    )


def entries_of_snapshot(snapshot: budget_pb.BudgetSnapshot, now_s: float) -> tuple[BudgetEntry, ...]:
    """Every enforceable budget of the snapshot, in budget id order, in the window holding `now_s`.

    The server's figure counts only for the window it is for (a window the snapshot does not cover yet starts at
    0); a HARD_STOP budget's lease likewise, else floor(limit / sharing gateways) for the new window.
    """
    leases = {lease.budget_id: lease for lease in snapshot.leases}
    entries = []
    for verdict in sorted(snapshot.budgets, key=lambda v: v.budget.budget_id):
        rule = rule_of(verdict.budget)
        if rule is None:
            continue
        window = window_at(rule.period, time_zone(rule.time_zone), now_s)
        status = verdict.status
        same_window = status.window_start_time.seconds == window.start_s
        allowance: int | None = None
        sharing = 0
        lease = leases.get(rule.budget_id)
        if rule.mode is Mode.HARD_STOP and lease is not None:
            sharing = max(1, lease.sharing_gateways)
            if lease.window_start_time.seconds == window.start_s:
                allowance = max(0, int(lease.allowance))
            else:
                allowance = rule.limit // sharing
        entries.append(
            BudgetEntry(
                budget=verdict.budget,
                rule=rule,
                window=window,
                server_used=int(status.used) if same_window else 0,
                allowance=allowance,
                sharing_gateways=sharing,
            )
        )
    return tuple(entries)
