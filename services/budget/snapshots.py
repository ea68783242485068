"""Budget snapshots for agents: every budget that applies to one gateway, its current window's figures, the
exact set of the gateway's own events those figures include, and a lease per HARD_STOP budget.

Consistency. The budgets, their windows, the gateway's included set (services/budget/included.py) and the
gateway counts are read in ONE transaction (REPEATABLE READ on PostgreSQL, one read transaction on SQLite). The
usage transaction updates the windows and the included set together, so the figures count exactly the stored
events the included set names (plus other gateways' events and events not sent through an agent).

Leases. For a HARD_STOP budget shared by N gateways (the gateways its scope covers: 1 for a gateway-scoped
budget, the environment's registered gateways for an environment-scoped one, every registered gateway for an
organization-wide one; removed gateways do not count, and never fewer than 1), each gateway's allowance is
floor(max(0, limit - used) / N) in the budget's unit: what it may add on its own beyond the figures.

Push. `watch` yields the first snapshot at once, then a new one whenever it may have changed (changes.py), at
most one per `min_interval`, at least once per `refresh_interval` (the heartbeat interval) and when a window
rolls over, until the server closes the streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from budgeting.decision import Mode
from budgeting.scope import Scope
from services.budget import store
from services.budget.changes import BudgetChanges
from services.budget.included import IncludedSet
from services.budget.records import BudgetStatus
from services.budget.service import figures_of
from services.gateway_registry import ensure_gateway
from services.storage import tables
from services.storage.uow import UnitOfWork
from services.timestamps import Clock, utc_now

_gw = tables.gateways


@dataclass(frozen=True, slots=True)
class BudgetLease:
    """What one gateway may add on its own to a HARD_STOP budget's window beyond the snapshot's figures."""

    budget_id: str
    window_start: int
    """Epoch seconds."""
    allowance: int
    sharing_gateways: int


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """The control plane's view of every budget that applies to one gateway, at `snapshot_time`."""

    statuses: list[BudgetStatus]
    """In budget id order."""
    included: IncludedSet
    leases: list[BudgetLease]
    snapshot_time: datetime

    @property
    def next_rollover_s(self) -> int | None:
        """Epoch seconds when the first of the windows ends (None: none ends)."""
        ends = [status.figures.window.end_s for status in self.statuses if status.figures.window.end_s is not None]
        return min(ends) if ends else None


def lease_allowance(limit: int, used: int, sharing_gateways: int) -> int:
    """floor((limit - used) / sharing_gateways), never negative."""
    return max(0, limit - used) // max(1, sharing_gateways)


class BudgetSnapshots:
    """Builds and pushes budget snapshots for gateways."""

    def __init__(self, engine: AsyncEngine, changes: BudgetChanges, *, min_interval: timedelta, clock: Clock = utc_now):
        self._engine = engine
        # A snapshot for the whole read on PostgreSQL; SQLite gets an explicit read transaction (build).
        self._read_engine = (
            engine.execution_options(isolation_level="REPEATABLE READ")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._changes = changes
        self._min_interval_s = min_interval.total_seconds()
        self._clock = clock

    async def build(self, environment_id: str, gateway_id: str) -> BudgetSnapshot:
        """The gateway's snapshot now, read in one consistent transaction."""
        now = self._clock()
        async with UnitOfWork(self._read_engine) as uow:
            connection = uow.connection
            if connection.dialect.name == "sqlite":
                # The driver begins only before a write; without this each SELECT would see its own moment.
                await connection.exec_driver_sql("BEGIN")
            budgets = [
                budget
                for budget in await store.budgets_covering(connection, environment_id, gateway_id)
                if budget.rule.scope.covers_gateway(environment_id, gateway_id)
            ]
            windows = [budget.window_at(now.timestamp()) for budget in budgets]
            rows = await store.windows_of(
                connection, [budget.budget_id for budget in budgets], [window.start_s for window in windows]
            )
            statuses = [
                figures_of(budget, window, rows.get((budget.budget_id, window.start_s)))
                for budget, window in zip(budgets, windows, strict=True)
            ]
            included = await _included(connection, environment_id, gateway_id)
            sharing: dict[tuple[str, str], int] = {}
            leases = []
            for status in statuses:
                rule = status.figures.rule
                if rule.mode is not Mode.HARD_STOP:
                    continue
                key = (rule.scope.environment_id, rule.scope.gateway_id)
                if key not in sharing:
                    sharing[key] = await _sharing_gateways(connection, rule.scope)
                leases.append(
                    BudgetLease(
                        budget_id=rule.budget_id,
                        window_start=status.figures.window.start_s,
                        allowance=lease_allowance(rule.limit, status.figures.used, sharing[key]),
                        sharing_gateways=sharing[key],
                    )
                )
        return BudgetSnapshot(statuses, included, leases, now)

    async def register(self, environment_id: str, gateway_id: str) -> None:
        """A snapshot stream is contact: the gateway exists (and counts toward its budgets' leases) from it."""
        async with UnitOfWork(self._engine) as uow:
            await ensure_gateway(
                uow.connection, environment_id=environment_id, gateway_id=gateway_id, now=self._clock()
            )
            await uow.commit()

    async def watch(
        self, environment_id: str, gateway_id: str, *, refresh_interval: Callable[[], timedelta]
    ) -> AsyncGenerator[BudgetSnapshot, None]:
        """Snapshots of the gateway: at once, on change (coalesced), periodically, until the streams close."""
        changes = self._changes
        closed = changes.closed
        if closed.is_set():
            return
        await self.register(environment_id, gateway_id)
        subscription = changes.subscribe((environment_id, gateway_id))
        loop = asyncio.get_running_loop()
        try:
            while not closed.is_set():
                sent_at = loop.time()
                snapshot = await self.build(environment_id, gateway_id)
                changes.watching(subscription, frozenset(status.budget.budget_id for status in snapshot.statuses))
                yield snapshot
                wait_s = refresh_interval().total_seconds()
                rollover = snapshot.next_rollover_s
                if rollover is not None:
                    wait_s = min(wait_s, max(0.0, rollover - self._clock().timestamp()))
                await subscription.wait(wait_s)
                # Coalesce: at most one snapshot per min_interval, however many changes arrive meanwhile.
                rest = sent_at + self._min_interval_s - loop.time()
                if rest > 0 and not closed.is_set():
                    try:
                        async with asyncio.timeout(rest):
                            await closed.wait()
                    except TimeoutError:
                        pass
        finally:
            changes.unsubscribe(subscription)


async def _included(connection: AsyncConnection, environment_id: str, gateway_id: str) -> IncludedSet:
    row = (
        await connection.execute(
            sa.select(_gw.c.included_through_sequence, _gw.c.included_ranges).where(
                _gw.c.environment_id == environment_id, _gw.c.gateway_id == gateway_id
            )
        )
    ).one_or_none()
    return IncludedSet() if row is None else IncludedSet.decode(int(row[0]), row[1])


async def _sharing_gateways(connection: AsyncConnection, scope: Scope) -> int:
    """The registered, not removed, gateways a scope covers (at least 1)."""
    if scope.environment_id and scope.gateway_id:
        return 1
    query = sa.select(sa.func.count()).select_from(_gw).where(_gw.c.delete_time.is_(None))
    if scope.environment_id:
        query = query.where(_gw.c.environment_id == scope.environment_id)
    if scope.gateway_id:
        query = query.where(_gw.c.gateway_id == scope.gateway_id)
    return max(1, int(await connection.scalar(query) or 0))
