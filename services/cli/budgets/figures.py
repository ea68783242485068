"""How budgets read in a table: limits typed in currency units, amounts in their unit, bars, state and reset time.

JSON output keeps the server's values (integer micro-units for spend); only tables go through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from rich.table import Table

from budgeting.scope import Scope
from meterwire.budget.v1 import budget_service_pb2 as pb
from services.cli.client import fail

MICROS_PER_UNIT: Final = 1_000_000
MAX_LIMIT: Final = 2**62
"""The largest limit the server stores (services/budget/service.py), checked here to name the option."""
BAR_CELLS: Final = 10
_DECIMAL_DIGITS: Final = 40
"""Enough digits that no limit up to MAX_LIMIT micros is rounded while it is scaled."""

METRICS: Final = {"spend": pb.METRIC_SPEND, "tokens": pb.METRIC_TOKENS, "requests": pb.METRIC_REQUESTS}
PERIODS: Final = {"day": pb.PERIOD_DAY, "week": pb.PERIOD_WEEK, "month": pb.PERIOD_MONTH, "total": pb.PERIOD_TOTAL}
MODES: Final = {"hard-stop": pb.MODE_HARD_STOP, "warn-only": pb.MODE_WARN_ONLY}
_STATE_STYLES: Final = {
    pb.BUDGET_STATE_OK: "green",
    pb.BUDGET_STATE_WARNING: "yellow",
    pb.BUDGET_STATE_EXCEEDED: "red",
}


def choice(names: Mapping[str, int], given: str, option: str) -> int:
    """An enum value from its CLI name; exit 2 naming the option and the names it takes."""
    value = names.get(given.lower())
    if value is None:
        fail(f"{option}: {given!r} is not one of {', '.join(names)}", code=2)
    return value


def name_of(names: Mapping[str, int], value: int) -> str:
    return next((name for name, known in names.items() if known == value), "?")


def limit_value(text: str, metric: int, option: str = "--limit") -> int:
    """The limit in the server's unit: spend typed in currency units ("250", "12.50") as exact micro-units,
    tokens and requests as whole counts. Exit 2 naming the option for anything else."""
    if metric == pb.METRIC_SPEND:
        try:
            amount = Decimal(text.strip())
        except InvalidOperation:
            fail(f"{option}: {text!r} is not an amount, e.g. 250 or 12.50 (in the budget's currency)", code=2)
        if not amount.is_finite():
            fail(f"{option}: {text!r} is not an amount, e.g. 250 or 12.50", code=2)
        with localcontext() as context:
            context.prec = _DECIMAL_DIGITS
            micros = amount * MICROS_PER_UNIT
        if micros != micros.to_integral_value():
            fail(f"{option}: {text!r} has more than 6 decimals (amounts are stored in micro-units)", code=2)
        value = int(micros)
    else:
        digits = text.strip().replace("_", "").replace(",", "")
        if not digits.isdigit():
            fail(f"{option}: {text!r} is not a whole number of {name_of(METRICS, metric)}", code=2)
        value = int(digits)
    if not 0 < value <= MAX_LIMIT:
        fail(f"{option}: {text!r} must be positive (and at most {MAX_LIMIT:,} in the server's unit)", code=2)
    return value


def parse_tags(given: list[str] | None) -> dict[str, str]:
    """--tag KEY=VALUE options as a map; exit 2 for a missing '=' or key, or a key given twice."""
    tags: dict[str, str] = {}
    for tag in given or []:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            fail(f"--tag: {tag!r} is not KEY=VALUE", code=2)
        if key in tags:
            fail(f"--tag: {key!r} is given twice (a scope's tags must all match, one value per key)", code=2)
        tags[key] = value
    return tags


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--time-zone: {name!r} is not an IANA time zone such as Europe/Berlin", code=2)
    return name


def amount(value: int, budget: pb.Budget) -> str:
    """A figure in the budget's unit: spend exactly in its currency (2 to 6 decimals), counts with their unit."""
    if budget.metric == pb.METRIC_SPEND:
        units = Decimal(value) / MICROS_PER_UNIT
        text = f"{units:,.6f}".rstrip("0")
        decimals = len(text.partition(".")[2])
        if decimals < 2:
            text = f"{units:,.2f}"
        return f"{text} {budget.currency}".strip()
    return f"{value:,} {name_of(METRICS, budget.metric)}"


def percent_used(status: pb.WindowStatus) -> int:
    return status.used * 100 // status.limit if status.limit > 0 else 0


def usage_bar(status: pb.WindowStatus) -> str:
    """`████░░░░░░ 42%`, coloured by the window's state (full past 100 %, the percent tells by how much)."""
    percent = percent_used(status)
    full = min(BAR_CELLS, percent * BAR_CELLS // 100)
    style = _STATE_STYLES.get(status.state, "")
    return f"[{style}]{'█' * full}[/][dim]{'░' * (BAR_CELLS - full)}[/] {percent}%"


def state_text(status: pb.WindowStatus) -> str:
    name = pb.BudgetState.Name(status.state).removeprefix("BUDGET_STATE_").lower()
    if status.state == pb.BUDGET_STATE_WARNING and status.crossed_threshold_percent:
        name = f"warning ({status.crossed_threshold_percent}%)"
    return f"[{_STATE_STYLES.get(status.state, '')}]{name}[/]"


def local_time(moment: datetime, budget: pb.Budget) -> str:
    """A moment in the budget's time zone, as its windows are cut."""
    zone = ZoneInfo(budget.time_zone or "UTC")
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def time_left(until: datetime, now: datetime) -> str:
    """'in 3d 4h', 'in 2h 5m', 'in 12m' ('now' once it passed)."""
    seconds = int((until - now).total_seconds())
    if seconds <= 0:
        return "now"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"in {days}d {hours}h"
    if hours:
        return f"in {hours}h {minutes}m"
    return f"in {max(minutes, 1)}m"


def reset_text(budget: pb.Budget, status: pb.WindowStatus, now: datetime) -> str:
    """When the window resets, in the budget's time zone and from now; 'never' for a total budget."""
    if not status.HasField("window_end_time"):
        return "never"
    end = status.window_end_time.ToDatetime(tzinfo=UTC)
    return f"{local_time(end, budget)} ({time_left(end, now)})"


def scope_text(scope: pb.Scope) -> str:
    """The scope in words, as the server logs and explains it (budgeting.scope.Scope.describe)."""
    return Scope(
        environment_id=scope.environment_id,
        gateway_id=scope.gateway_id,
        api_key_id=scope.api_key_id,
        user_id=scope.user_id,
        requested_model=scope.requested_model,
        resolved_model=scope.resolved_model,
        provider=scope.provider,
        route=scope.route,
        tags=tuple(scope.tags.items()),
    ).describe()


def period_text(budget: pb.Budget) -> str:
    period = name_of(PERIODS, budget.period)
    return period if budget.period == pb.PERIOD_TOTAL else f"{period} ({budget.time_zone or 'UTC'})"


def used_text(budget: pb.Budget, status: pb.WindowStatus) -> str:
    return f"{amount(status.used, budget)} / {amount(status.limit, budget)}"


def budgets_table(items: list[pb.BudgetWithStatus], now: datetime, *, title: str | None = None) -> Table:
    """The short view (name, bar, state, reset) that `usage summary` shows under its figures."""
    table = Table("budget", "scope", "used / limit", "", "state", "resets", title=title, title_justify="left")
    for item in items:
        table.add_row(
            item.budget.display_name,
            scope_text(item.budget.scope),
            used_text(item.budget, item.status),
            usage_bar(item.status),
            state_text(item.status),
            reset_text(item.budget, item.status, now),
        )
    return table
