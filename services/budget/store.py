"""SQL for budgets, their windows, alerts and webhooks (the budget service's storage).

The functions ingest also calls take a synchronous connection (the usage writer runs its transaction in a
thread); async callers run them with `AsyncConnection.run_sync`.

The generation row. Every budget change bumps `budget_generation` first thing in its transaction (taking the
row's write lock), and every usage transaction reads it (FOR SHARE on PostgreSQL) before it stores events. So a
budget's backfill of stored usage runs after every usage transaction that could not see the budget has committed,
and every usage transaction after it counts with the budget: none is missed or counted twice. On SQLite the one
writer lock gives the same order.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from budgeting.decision import newly_crossed
from services.budget.records import AlertRecord, BudgetRecord, Visibility, budget_from_row
from services.storage import dialect, tables

_b = tables.budgets
_w = tables.budget_windows
_a = tables.budget_alerts
_g = tables.budget_generation
_hooks = tables.webhooks
_deliveries = tables.webhook_deliveries


def bump_generation(connection: sa.Connection) -> int:
    """Takes the budget write lock (see the module docstring) and returns the new generation."""
    result = connection.execute(
        _g.update().where(_g.c.singleton == 1).values(generation=_g.c.generation + 1).returning(_g.c.generation)
    )
    return int(result.scalar_one())


def read_generation(connection: sa.Connection) -> int:
    """The current generation; on PostgreSQL holds a share lock until the transaction ends."""
    query = sa.select(_g.c.generation).where(_g.c.singleton == 1)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    return int((connection.execute(query)).scalar_one())


def visible(visibility: Visibility, column: sa.ColumnElement[str | None]) -> list[sa.ColumnElement[bool]]:
    """Visibility.allows as SQL over an environment_id column (NULL for organization-wide)."""
    if visibility.environment_ids is None and visibility.organization:
        return []
    clauses = [] if visibility.environment_ids is None else [column.in_(sorted(visibility.environment_ids))]
    if visibility.environment_ids is None:
        clauses.append(column.is_not(None))
    if visibility.organization:
        clauses.append(column.is_(None))
    return [sa.or_(*clauses)]


def new_budget_id() -> str:
    return f"bud_{secrets.token_hex(10)}"


def new_alert_id(now_us: int) -> str:
    """Time-sortable: newer alerts sort after older ones (16 hex digits of microseconds, then randomness)."""
    return f"alr_{now_us:016x}{secrets.token_hex(6)}"


async def insert_budget(connection: AsyncConnection, values: Mapping[str, Any]) -> None:
    await connection.execute(_b.insert().values(**values))


async def get_budget(connection: AsyncConnection, budget_id: str) -> BudgetRecord | None:
    row = (
        await connection.execute(sa.select(_b).where(_b.c.budget_id == budget_id, _b.c.delete_time.is_(None)))
    ).one_or_none()
    return None if row is None else budget_from_row(row)


async def budget_id_of_request(connection: AsyncConnection, request_id: str) -> str | None:
    found = await connection.scalar(sa.select(_b.c.budget_id).where(_b.c.create_request_id == request_id))
    return None if found is None else str(found)


async def list_budgets(
    connection: AsyncConnection, *, visibility: Visibility, after_budget_id: str, limit: int
) -> list[BudgetRecord]:
    query = (
        sa.select(_b)
        .where(_b.c.delete_time.is_(None), _b.c.budget_id > after_budget_id, *visible(visibility, _b.c.environment_id))
        .order_by(_b.c.budget_id)
        .limit(limit)
    )
    return [budget_from_row(row) for row in await connection.execute(query)]


def active_budgets(connection: sa.Connection) -> list[BudgetRecord]:
    """Every budget not deleted, in budget id order (what ingest counts toward)."""
    query = sa.select(_b).where(_b.c.delete_time.is_(None)).order_by(_b.c.budget_id)
    return [budget_from_row(row) for row in connection.execute(query)]


async def budgets_covering(connection: AsyncConnection, environment_id: str, gateway_id: str) -> list[BudgetRecord]:
    """Budgets not deleted whose environment and gateway selectors let this gateway's events match (its own
    environment's and organization-wide ones), in budget id order; Scope.covers_gateway decides the rest."""
    query = (
        sa.select(_b)
        .where(
            _b.c.delete_time.is_(None),
            sa.or_(_b.c.environment_id.is_(None), _b.c.environment_id == environment_id),
            _b.c.gateway_id.in_(("", gateway_id)),
        )
        .order_by(_b.c.budget_id)
    )
    return [budget_from_row(row) for row in await connection.execute(query)]


async def update_budget(
    connection: AsyncConnection, budget_id: str, *, revision: int, values: Mapping[str, Any], now: datetime
) -> bool:
    """Applies `values` if the budget is at `revision`; False when it moved on (or is gone)."""
    result = await connection.execute(
        _b.update()
        .where(_b.c.budget_id == budget_id, _b.c.revision == revision, _b.c.delete_time.is_(None))
        .values(**values, revision=revision + 1, update_time=now)
    )
    return result.rowcount == 1


async def delete_budget(connection: AsyncConnection, budget_id: str, *, now: datetime) -> bool:
    result = await connection.execute(
        _b.update().where(_b.c.budget_id == budget_id, _b.c.delete_time.is_(None)).values(delete_time=now)
    )
    return result.rowcount == 1


@dataclass(frozen=True, slots=True)
class WindowRow:
    window_start: int
    window_end: int | None
    used: int
    update_time_us: int


async def get_window(connection: AsyncConnection, budget_id: str, window_start: int) -> WindowRow | None:
    row = (
        await connection.execute(
            sa.select(_w.c.window_start, _w.c.window_end, _w.c.used, _w.c.update_time_us).where(
                _w.c.budget_id == budget_id, _w.c.window_start == window_start
            )
        )
    ).one_or_none()
    return (
        None
        if row is None
        else WindowRow(int(row[0]), None if row[1] is None else int(row[1]), int(row[2]), int(row[3]))
    )


async def windows_of(
    connection: AsyncConnection, budget_ids: Sequence[str], window_starts: Sequence[int]
) -> dict[tuple[str, int], WindowRow]:
    """The stored windows among the (budget id, window start) pairs given position by position."""
    if not budget_ids:
        return {}
    wanted = set(zip(budget_ids, window_starts, strict=True))
    query = sa.select(_w).where(
        _w.c.budget_id.in_(sorted(set(budget_ids))), _w.c.window_start.in_(sorted(set(window_starts)))
    )
    found: dict[tuple[str, int], WindowRow] = {}
    for row in await connection.execute(query):
        key = (str(row.budget_id), int(row.window_start))
        if key in wanted:
            found[key] = WindowRow(
                key[1], None if row.window_end is None else int(row.window_end), int(row.used), int(row.update_time_us)
            )
    return found


async def list_windows(
    connection: AsyncConnection, budget_id: str, *, before_start: int | None, limit: int
) -> list[WindowRow]:
    """Stored windows, newest first."""
    query = sa.select(_w.c.window_start, _w.c.window_end, _w.c.used, _w.c.update_time_us).where(
        _w.c.budget_id == budget_id
    )
    if before_start is not None:
        query = query.where(_w.c.window_start < before_start)
    rows = await connection.execute(query.order_by(_w.c.window_start.desc()).limit(limit))
    return [WindowRow(int(r[0]), None if r[1] is None else int(r[1]), int(r[2]), int(r[3])) for r in rows]


WindowKey = tuple[str, int]
"""(budget id, window start)."""


@dataclass(frozen=True, slots=True)
class Increment:
    """What one transaction adds to one budget window."""

    window_end: int | None
    amount: int


def add_to_windows(
    connection: sa.Connection, increments: Mapping[WindowKey, Increment], *, now_us: int
) -> dict[WindowKey, tuple[int, int]]:
    """Adds each increment to its window in ONE statement; returns (used before, used after) per window.

    The addition happens in the database under the row's lock, so `after - amount` is exactly what the window
    held before this transaction's increment, even with several replicas adding at once."""
    if not increments:
        return {}
    statement = dialect.upsert_adding(
        _w,
        dialect_name=connection.dialect.name,
        key_columns=("budget_id", "window_start"),
        add_columns=("used",),
        replace_columns=("update_time_us",),
    ).values(
        [
            {
                "budget_id": budget_id,
                "window_start": window_start,
                "window_end": increment.window_end,
                "used": increment.amount,
                "update_time_us": now_us,
            }
            for (budget_id, window_start), increment in sorted(increments.items())
        ]
    )
    result = connection.execute(statement.returning(_w.c.budget_id, _w.c.window_start, _w.c.used))
    changed: dict[WindowKey, tuple[int, int]] = {}
    for budget_id, window_start, used in result:
        key = (str(budget_id), int(window_start))
        changed[key] = (int(used) - increments[key].amount, int(used))
    return changed


def raise_alerts(
    connection: sa.Connection,
    budgets: Mapping[str, BudgetRecord],
    changed: Mapping[WindowKey, tuple[int, int]],
    *,
    now: datetime,
) -> list[AlertRecord]:
    """Stores one alert per threshold each window change crossed, and queues it for every matching webhook.

    (budget, window, threshold) is unique, so two replicas crossing the same threshold at once store ONE alert:
    the loser's insert does nothing, and only inserted alerts are queued."""
    now_us = int(now.timestamp() * 1_000_000)
    wanted: list[AlertRecord] = []
    for (budget_id, window_start), (before, after) in sorted(changed.items()):
        budget = budgets[budget_id]
        rule = budget.rule
        for percent in newly_crossed(before, after, rule.limit, rule.thresholds):
            wanted.append(
                AlertRecord(
                    # One microsecond apart, so alerts raised together list in the order they were crossed.
                    alert_id=new_alert_id(now_us + len(wanted)),
                    budget_id=budget_id,
                    window_start=window_start,
                    threshold_percent=percent,
                    used=after,
                    limit=rule.limit,
                    mode=rule.mode,
                    create_time=now,
                    display_name=rule.display_name,
                    environment_id=rule.scope.environment_id,
                )
            )
    if not wanted:
        return []
    statement = dialect.insert_ignore_duplicates(
        _a, dialect_name=connection.dialect.name, index_elements=("budget_id", "window_start", "threshold_percent")
    )
    result = connection.execute(
        statement.values(
            [
                {
                    "alert_id": alert.alert_id,
                    "budget_id": alert.budget_id,
                    "window_start": alert.window_start,
                    "threshold_percent": alert.threshold_percent,
                    "used": alert.used,
                    "limit_value": alert.limit,
                    "mode": int(alert.mode),
                    "create_time": alert.create_time,
                }
                for alert in wanted
            ]
        ).returning(_a.c.alert_id)
    )
    stored_ids = {str(alert_id) for (alert_id,) in result}
    stored = [alert for alert in wanted if alert.alert_id in stored_ids]
    queue_deliveries(connection, stored, now_us=now_us)
    return stored


def queue_deliveries(connection: sa.Connection, alerts: Iterable[AlertRecord], *, now_us: int) -> None:
    """Outbox rows for every webhook that wants each alert (its environment, or all; its budget, or any)."""
    alerts = list(alerts)
    if not alerts:
        return
    hooks = (
        connection.execute(
            sa.select(_hooks.c.webhook_id, _hooks.c.environment_id, _hooks.c.budget_id).where(
                _hooks.c.delete_time.is_(None)
            )
        )
    ).all()
    rows = [
        {"webhook_id": hook.webhook_id, "alert_id": alert.alert_id, "next_attempt_time_us": now_us}
        for alert in alerts
        for hook in hooks
        if (hook.environment_id is None or hook.environment_id == alert.environment_id)
        and (hook.budget_id is None or hook.budget_id == alert.budget_id)
    ]
    if rows:
        connection.execute(_deliveries.insert().values(rows))


def now_us() -> int:
    return time.time_ns() // 1000
