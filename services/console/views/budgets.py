"""The Budgets page: each visible budget's current window as a used/limit bar, its reset time, recent alerts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from budgeting.decision import Metric
from services.budget.records import BudgetStatus, Visibility
from services.console.context import Console, Viewer
from services.console.query import ViewQuery
from services.usage_terms.figures import money

BUDGETS_SHOWN = 500
ALERTS_SHOWN = 50


@dataclass(frozen=True, slots=True)
class Denials:
    """What agents enforcing a budget decided since they started (AgentState.budget_enforcement)."""

    denied: int
    """Requests a hard-stop budget denied."""
    shadow_denied: int
    """Requests a warn-only budget let through that a hard stop would have denied."""
    gateways: int
    """Gateways that reported them."""


@dataclass(frozen=True, slots=True)
class BudgetLine:
    status: BudgetStatus
    denials: Denials | None
    """None: no gateway reported decisions for this budget."""
    used: str
    limit: str
    percent: float
    reset: datetime | None


def _amount(value: int, metric: Metric, currency: str) -> str:
    return money(value, currency) if metric is Metric.SPEND else f"{value:,} {metric.name.lower()}"


async def _denials(console: Console, environment_ids: frozenset[str] | None) -> dict[str, Denials]:
    """Budget id -> the denials the visible gateways' agents reported in their latest heartbeats, summed."""
    totals: dict[str, Denials] = {}
    for record in await console.fleet.gateways(environment_ids):
        for entry in record.state.budget_enforcement:
            known = totals.get(entry.budget_id, Denials(0, 0, 0))
            totals[entry.budget_id] = Denials(
                known.denied + entry.denied_requests,
                known.shadow_denied + entry.shadow_denied_requests,
                known.gateways + 1,
            )
    return totals


def _line(status: BudgetStatus, denials: Denials | None) -> BudgetLine:
    rule, figures = status.budget.rule, status.figures
    end_s = figures.window.end_s
    return BudgetLine(
        status=status,
        denials=denials,
        used=_amount(figures.used, rule.metric, status.budget.currency),
        limit=_amount(rule.limit, rule.metric, status.budget.currency),
        percent=figures.used / rule.limit * 100 if rule.limit else 0.0,
        reset=None if end_s is None else datetime.fromtimestamp(end_s, UTC),
    )


async def budgets_page(console: Console, request: Request, viewer: Viewer) -> Response:
    query = ViewQuery.from_params(request.query_params)
    principal = viewer.principal
    # As the Budget RPCs decide: organization-wide budgets only for a token that may read every environment.
    visibility = Visibility(
        principal.visible_environments(query.env, field="env"),
        organization=principal.visible_environments((), field="env") is None,
    )
    statuses, _ = await console.budgets.list_budgets(
        visibility=visibility, requested_page_size=BUDGETS_SHOWN, page_token=""
    )
    alerts, _ = await console.webhooks.alerts(
        visibility=visibility, budget_id="", requested_page_size=ALERTS_SHOWN, page_token=""
    )
    denials = await _denials(console, visibility.environment_ids)
    lines = [_line(status, denials.get(status.budget.budget_id)) for status in statuses]
    units = {line.status.budget.budget_id: line.status for line in lines}

    def alert_amount(budget_id: str, value: int) -> str:
        """An alert's figure in its budget's unit (a raw count when the budget is not listed)."""
        status = units.get(budget_id)
        return f"{value:,}" if status is None else _amount(value, status.budget.rule.metric, status.budget.currency)

    return console.render(
        request,
        "budgets.html",
        viewer,
        title="Budgets",
        query=query,
        zone=query.time_zone(),
        budgets=lines,
        alerts=alerts,
        alert_amount=alert_amount,
        environments=await console.environment_choices(principal),
    )
