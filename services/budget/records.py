"""Budgets, their windows and alerts as plain records, and how a budget row becomes one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from budgeting.decision import BudgetRule, Metric, Mode, WindowFigures
from budgeting.scope import EVENT_SELECTORS, Scope
from budgeting.windows import Period, Window, time_zone, window_at


@dataclass(frozen=True, slots=True)
class BudgetRecord:
    rule: BudgetRule
    currency: str
    first_window_start: int
    """Epoch seconds: the window the budget was created in; usage of earlier windows is not counted."""
    revision: int
    create_time: datetime
    update_time: datetime

    @property
    def budget_id(self) -> str:
        return self.rule.budget_id

    @property
    def environment_id(self) -> str:
        return self.rule.scope.environment_id

    def window_at(self, moment_s: float) -> Window:
        rule = self.rule
        return window_at(rule.period, time_zone(rule.time_zone), moment_s)


@dataclass(frozen=True, slots=True)
class Visibility:
    """Which budgets (and their alerts and webhooks) a caller sees."""

    environment_ids: frozenset[str] | None
    """Environments whose budgets are shown; None: every one."""
    organization: bool
    """Whether organization-wide ones are shown: they sum every environment's usage, so only a caller who may
    read every environment sees them (also when it asks for some environments only)."""

    def allows(self, environment_id: str) -> bool:
        """Whether a budget of `environment_id` ("" for organization-wide) is visible."""
        if not environment_id:
            return self.organization
        return self.environment_ids is None or environment_id in self.environment_ids


EVERYTHING: Final = Visibility(None, organization=True)


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A budget with one of its windows."""

    budget: BudgetRecord
    figures: WindowFigures
    update_time_us: int | None
    """When `used` last changed; None: nothing counted in the window."""


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert_id: str
    budget_id: str
    window_start: int
    threshold_percent: int
    used: int
    limit: int
    mode: Mode
    create_time: datetime
    display_name: str
    environment_id: str


def tags_json(scope: Scope) -> str:
    """The stored form of a scope's tag selectors ('' for none)."""
    return json.dumps(dict(scope.tags), sort_keys=True, separators=(",", ":")) if scope.tags else ""


def scope_values(scope: Scope) -> dict[str, Any]:
    """budgets columns of a scope."""
    return {
        "environment_id": scope.environment_id or None,
        "gateway_id": scope.gateway_id,
        **{name: getattr(scope, name) for name in EVENT_SELECTORS},
        "tags": tags_json(scope),
    }


def budget_from_row(row: Any) -> BudgetRecord:
    scope = Scope(
        environment_id=row.environment_id or "",
        gateway_id=row.gateway_id,
        tags=tuple(json.loads(row.tags).items()) if row.tags else (),
        **{name: getattr(row, name) for name in EVENT_SELECTORS},
    )
    rule = BudgetRule(
        budget_id=row.budget_id,
        display_name=row.display_name,
        scope=scope,
        metric=Metric(row.metric),
        limit=int(row.limit_value),
        period=Period(row.period),
        time_zone=row.time_zone,
        mode=Mode(row.mode),
        thresholds=tuple(int(percent) for percent in json.loads(row.alert_thresholds)),
    )
    return BudgetRecord(
        rule=rule,
        currency=row.currency,
        first_window_start=int(row.first_window_start),
        revision=int(row.revision),
        create_time=row.create_time,
        update_time=row.update_time,
    )
