"""What one usage event adds to a budget, in Python (live counting at ingest) and in SQL (backfill of stored
usage when a budget is made); the two forms are tested against each other on random events.

SPEND adds the event's cost (reported or derived; an unpriced event adds 0), TOKENS every token kind it reported,
REQUESTS 1 for a gateway request's first attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from budgeting.decision import Metric
from budgeting.scope import EVENT_SELECTORS, Scope
from budgeting.windows import Window
from services.storage import tables

TOKEN_COLUMNS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def event_amount(metric: Metric, event: Mapping[str, Any]) -> int:
    """What a stored usage event row adds to a budget of `metric`."""
    if metric is Metric.SPEND:
        return int(event["cost_micros"] or 0)
    if metric is Metric.TOKENS:
        return sum(int(event[column] or 0) for column in TOKEN_COLUMNS)
    return 1 if event["attempt"] == 1 else 0


def _amount_sql(metric: Metric) -> ColumnElement[Any]:
    e = tables.usage_events.c
    if metric is Metric.SPEND:
        return sa.func.coalesce(sa.func.sum(e.cost_micros), 0)
    if metric is Metric.TOKENS:
        total = sum(
            (sa.func.coalesce(e[column], 0) for column in TOKEN_COLUMNS[1:]), sa.func.coalesce(e[TOKEN_COLUMNS[0]], 0)
        )
        return sa.func.coalesce(sa.func.sum(total), 0)
    return sa.func.coalesce(sa.func.sum(sa.case((e.attempt == 1, 1), else_=0)), 0)


def scope_conditions(scope: Scope) -> list[ColumnElement[bool]]:
    """The scope as SQL over usage_events: the same selectors Scope.matches checks."""
    events = tables.usage_events
    e = events.c
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
    return int(await connection.scalar(sa.select(_amount_sql(metric)).where(*conditions)) or 0)
