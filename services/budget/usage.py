"""What stored usage adds to a budget, by the accounting package's one definition (BUDGET_MEASURES): in Python
for live counting at ingest (per event: budgeting.amounts.event_amount, shared with the gateway agent), in SQL for
the backfill of stored usage when a budget is made.

SPEND adds the event's known cost (reported or derived; an unpriced event adds 0), TOKENS every token kind it
reported, REQUESTS 1 for a gateway request's first attempt: what reports show for the same scope.
"""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from budgeting.amounts import event_amount
from budgeting.decision import Metric
from budgeting.scope import EVENT_SELECTORS, Scope
from budgeting.windows import Window
from services.accounting.bounds import saturated, stored_integer
from services.accounting.measures import BUDGET_MEASURES, BudgetMeasures
from services.accounting.sql import RAW_SUMS
from services.storage import tables

__all__ = ["MEASURE_OF_METRIC", "amount", "event_amount", "scope_conditions", "stored_usage"]

MEASURE_OF_METRIC: Final = {Metric.SPEND: "spend_micros", Metric.TOKENS: "total_tokens", Metric.REQUESTS: "requests"}
"""A budget metric -> its BudgetMeasures field (accounting.measures.BUDGET_MEASURES)."""


def amount(metric: Metric, measures: BudgetMeasures) -> int:
    return int(getattr(measures, MEASURE_OF_METRIC[metric]))


def _sums_sql(metric: Metric) -> list[ColumnElement[Any]]:
    """One saturating SQL sum per measure the metric adds up; they are added in Python (saturated), since
    adding near-limit sums in SQL would overflow (PostgreSQL: "bigint out of range")."""
    return [sa.func.coalesce(RAW_SUMS[column], 0) for column in BUDGET_MEASURES[MEASURE_OF_METRIC[metric]]]


def scope_conditions(scope: Scope) -> list[ColumnElement[bool]]:
    """The scope as SQL over usage_events: the same selectors Scope.matches checks."""
    e = tables.usage_events.c
    conditions: list[ColumnElement[bool]] = []
    if scope.environment_id:
        conditions.append(e.environment_id == scope.environment_id)
    if scope.gateway_id:
        gateways = tables.gateways
        conditions.append(
            e.gateway_key.in_(
                sa.select(gateways.c.gateway_key).where(
                    gateways.c.environment_id == scope.environment_id, gateways.c.gateway_id == scope.gateway_id
                )
            )
        )
    conditions += [e[name] == getattr(scope, name) for name in EVENT_SELECTORS if getattr(scope, name)]
    tags = tables.usage_event_tags
    for key, value in scope.tags:
        conditions.append(
            sa.exists().where(
                tags.c.gateway_key == e.gateway_key,
                tags.c.event_id == e.event_id,
                tags.c.tag_key == key,
                tags.c.tag_value == value,
            )
        )
    return conditions


async def stored_usage(connection: AsyncConnection, scope: Scope, metric: Metric, window: Window) -> int:
    """The usage stored so far that counts toward a budget of `scope` and `metric` in `window`."""
    e = tables.usage_events.c
    conditions = scope_conditions(scope)
    conditions.append(e.event_time_us >= window.start_s * 1_000_000)
    if window.end_s is not None:
        conditions.append(e.event_time_us < window.end_s * 1_000_000)
    sums = (await connection.execute(sa.select(*_sums_sql(metric)).where(*conditions))).one()
    return saturated(sum(stored_integer(value) for value in sums))
