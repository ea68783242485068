"""Tells budget snapshot streams when what they show may have changed: in process at once, across replicas by
a poll.

In process, the usage writer reports every committed transaction (its gateways and the budgets whose windows
it moved) and the budget service every budget created, updated or deleted; each WatchBudgetStates stream is
woken only for its own gateway and its own budgets. Replicas sharing one database store usage and budgets this
process never sees, so a cheap poll (`poll_job`: the budget generation and the windows' figures, every
`budget_snapshot_poll_interval`) wakes every stream when either moved. Streams also refresh at least once per
heartbeat interval (snapshots.py), whatever the poll sees.

Built once by the server and handed to the writer, the budget service and the snapshot streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.jobs import PeriodicJob
from services.storage import tables
from services.storage.uow import UnitOfWork

GatewayName = tuple[str, str]
"""(environment_id, gateway_id)."""
_K = TypeVar("_K", str, GatewayName)


@dataclass(eq=False)
class Subscription:
    """One snapshot stream's wake-up: set when its gateway's usage or one of its budgets may have changed."""

    gateway: GatewayName
    budget_ids: frozenset[str] = frozenset()
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, timeout_s: float) -> None:
        """Returns once woken (then clears the wake-up) or after `timeout_s`, whichever comes first."""
        if timeout_s > 0 and not self.wakeup.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await self.wakeup.wait()
            except TimeoutError:
                return
        self.wakeup.clear()


class BudgetChanges:
    """The streams of this process by gateway and by budget, and what wakes them."""

    def __init__(self, engine: AsyncEngine, *, poll_interval: timedelta) -> None:
        self._engine = engine
        self._poll_interval = poll_interval
        self._by_gateway: dict[GatewayName, set[Subscription]] = {}
        self._by_budget: dict[str, set[Subscription]] = {}
        self._closed = asyncio.Event()
        self._seen: tuple[object, ...] | None = None

    @property
    def closed(self) -> asyncio.Event:
        """Set when the server stops serving snapshots: every stream ends."""
        return self._closed

    def subscribe(self, gateway: GatewayName) -> Subscription:
        subscription = Subscription(gateway)
        self._by_gateway.setdefault(gateway, set()).add(subscription)
        return subscription

    def watching(self, subscription: Subscription, budget_ids: frozenset[str]) -> None:
        """The budgets the stream's last snapshot showed (a usage commit counting into one of them wakes it)."""
        for budget_id in subscription.budget_ids - budget_ids:
            self._discard(self._by_budget, budget_id, subscription)
        for budget_id in budget_ids - subscription.budget_ids:
            self._by_budget.setdefault(budget_id, set()).add(subscription)
        subscription.budget_ids = budget_ids

    def unsubscribe(self, subscription: Subscription) -> None:
        self.watching(subscription, frozenset())
        self._discard(self._by_gateway, subscription.gateway, subscription)

    @staticmethod
    def _discard(index: dict[_K, set[Subscription]], key: _K, item: Subscription) -> None:
        members = index.get(key)
        if members is not None:
            members.discard(item)
            if not members:
                del index[key]

    def usage_committed(self, gateways: Iterable[GatewayName], budget_ids: frozenset[str]) -> None:
        """A usage transaction committed batches of `gateways` and moved the windows of `budget_ids`."""
        for gateway in gateways:
            for subscription in self._by_gateway.get(gateway, ()):
                subscription.wakeup.set()
        for budget_id in budget_ids:
            for subscription in self._by_budget.get(budget_id, ()):
                subscription.wakeup.set()

    def budgets_changed(self) -> None:
        """A budget was created, updated or deleted: every stream looks again (which budgets apply may change)."""
        for subscriptions in self._by_gateway.values():
            for subscription in subscriptions:
                subscription.wakeup.set()

    def close(self) -> None:
        """Ends every stream (the server is draining); safe to call twice."""
        self._closed.set()
        self.budgets_changed()

    def poll_job(self) -> PeriodicJob:
        return PeriodicJob("budget-snapshot-poll", self._poll_interval, self.poll)

    async def poll(self) -> None:
        """Wakes every stream when another replica changed a budget or counted usage since the last poll.

        What moves with every change: the budget generation (every budget change bumps it) and the windows'
        figures. On PostgreSQL the sum of `used` (exact numeric; every count adds a positive amount), because
        concurrent replicas stamp `update_time_us` when their transactions start, not in commit order. On
        SQLite the newest `update_time_us` suffices: one writer lock orders the transactions and each stamps its
        time after taking it. It polls with no stream open too, so a stream that opens later is woken for what
        changed after the poll before it; the first poll wakes every stream (nothing is known before it)."""
        windows = tables.budget_windows.c
        figures: list[sa.ColumnElement[Any]] = [sa.func.max(windows.update_time_us)]
        if self._engine.dialect.name == "postgresql":
            figures.append(sa.func.sum(windows.used))
        async with UnitOfWork(self._engine) as uow:
            generation = await uow.connection.scalar(sa.select(tables.budget_generation.c.generation))
            moved = (await uow.connection.execute(sa.select(*figures))).one()
        seen = (generation, *moved)
        if seen != self._seen:
            self.budgets_changed()
        self._seen = seen
