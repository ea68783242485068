"""Counts each usage transaction's new events toward every matching budget window, in that transaction.

The usage writer calls `begin` as its transaction's first statement (it reads the budget generation, under a
share lock on PostgreSQL, and reloads the budgets when they changed) and `count` after it stored the events:
one upsert adds the transaction's total to each (budget, window) it touched, and the thresholds an addition
crossed raise their alerts. Duplicates and refused events were never in the transaction's rollups, so they
never count; a late event counts toward the window of its event time (not before the budget's first window).

Budgets without tag selectors count from the transaction's per-minute rollup rows, which already hold every
measure a budget needs per combination of the other selectors: far fewer rows than events. Tag selectors are
not in the rollups, so budgets with them count from the new events that carry tags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import sqlalchemy as sa

from budgeting.windows import Window, time_zone, window_at
from services.accounting.rollup import ROLLUP_COLUMNS, RollupRow, budget_measures_of_rollup
from services.budget import store
from services.budget.records import AlertRecord, BudgetRecord
from services.budget.store import Increment, WindowKey
from services.budget.usage import amount, event_amount

_ROLLUP_POSITION: Final = {name: index for index, name in enumerate(ROLLUP_COLUMNS)}
_BUCKET: Final = _ROLLUP_POSITION["bucket_start"]
_GATEWAY_KEY: Final = _ROLLUP_POSITION["gateway_key"]

Gateways = Mapping[int, tuple[str, str]]
"""gateway_key -> (environment id, gateway id) of the transaction's batches."""


class _RollupRowView:
    """A rollup row read by column name, so Scope.matches_event (the one matching rule) can read it."""

    __slots__ = ("row",)

    def __init__(self, row: Sequence[Any]) -> None:
        self.row = row

    def __getitem__(self, name: str) -> object:
        return self.row[_ROLLUP_POSITION[name]]


@dataclass(slots=True)
class _Counted:
    budget: BudgetRecord
    window: Window | None = None
    """The window last used: most events of a transaction fall in it."""

    def window_of(self, moment_s: int) -> Window | None:
        """The window `moment_s` counts toward; None before the budget's first window."""
        window = self.window
        if window is None or not window.contains(moment_s):
            rule = self.budget.rule
            window = self.window = window_at(rule.period, time_zone(rule.time_zone), moment_s)
        return window if window.start_s >= self.budget.first_window_start else None


@dataclass(frozen=True, slots=True)
class CountResult:
    windows: int
    alerts: list[AlertRecord]
    budget_ids: frozenset[str] = frozenset()
    """The budgets whose windows moved (what budget snapshot streams refresh for)."""


class BudgetCounter:
    """One per usage writer; its transactions run one at a time."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._budgets: dict[str, BudgetRecord] = {}
        self._plain: list[_Counted] = []
        self._tagged: list[_Counted] = []

    @property
    def needs_tagged_events(self) -> bool:
        """Whether `count` needs the new events that carry tags (some budget selects by tag)."""
        return bool(self._tagged)

    @property
    def active(self) -> bool:
        return bool(self._budgets)

    def begin(self, connection: sa.Connection) -> None:
        """The transaction's first statement: the generation (share-locked), and the budgets if it moved."""
        generation = store.read_generation(connection)
        if generation == self._generation:
            return
        budgets = store.active_budgets(connection)
        self._budgets = {budget.budget_id: budget for budget in budgets}
        self._plain = [_Counted(budget) for budget in budgets if not budget.rule.scope.tags]
        self._tagged = [_Counted(budget) for budget in budgets if budget.rule.scope.tags]
        self._generation = generation

    def count(
        self,
        connection: sa.Connection,
        *,
        rollups: Iterable[RollupRow],
        tagged_events: Iterable[tuple[Mapping[str, Any], Mapping[str, str]]],
        gateways: Gateways,
        now: datetime,
    ) -> CountResult:
        """Adds the transaction's new events to their budget windows and raises the alerts they crossed."""
        if not self._budgets:
            return CountResult(0, [])
        increments: dict[WindowKey, Increment] = {}
        if self._plain:
            self._count_rollups(increments, rollups, gateways)
        if self._tagged:
            self._count_tagged(increments, tagged_events, gateways)
        if not increments:
            return CountResult(0, [])
        changed = store.add_to_windows(connection, increments, now_us=int(now.timestamp() * 1_000_000))
        return CountResult(
            len(changed),
            store.raise_alerts(connection, self._budgets, changed, now=now),
            frozenset(budget_id for budget_id, _ in changed),
        )

    def _count_rollups(
        self, increments: dict[WindowKey, Increment], rollups: Iterable[RollupRow], gateways: Gateways
    ) -> None:
        for row in rollups:
            environment_id, gateway_id = gateways[row[_GATEWAY_KEY]]
            view = _RollupRowView(row)
            moment = int(row[_BUCKET])
            measures = budget_measures_of_rollup(row)
            for counted in self._plain:
                scope = counted.budget.rule.scope
                if not scope.covers_gateway(environment_id, gateway_id) or not scope.matches_event(view, {}):
                    continue
                # Window boundaries fall on whole minutes (every zone's offset since 1972 is whole minutes, and
                # older events are refused as TOO_OLD), so all of a minute bucket's events share its window.
                window = counted.window_of(moment)
                if window is not None:
                    _add(increments, counted, window, amount(counted.budget.rule.metric, measures))

    def _count_tagged(
        self,
        increments: dict[WindowKey, Increment],
        events: Iterable[tuple[Mapping[str, Any], Mapping[str, str]]],
        gateways: Gateways,
    ) -> None:
        for event, tags in events:
            environment_id, gateway_id = gateways[event["gateway_key"]]
            moment = int(event["event_time_us"]) // 1_000_000
            for counted in self._tagged:
                scope = counted.budget.rule.scope
                if not scope.covers_gateway(environment_id, gateway_id) or not scope.matches_event(event, tags):
                    continue
                window = counted.window_of(moment)
                if window is not None:
                    _add(increments, counted, window, event_amount(counted.budget.rule.metric, event))


def _add(increments: dict[WindowKey, Increment], counted: _Counted, window: Window, amount: int) -> None:
    if not amount:
        return
    key = (counted.budget.budget_id, window.start_s)
    known = increments.get(key)
    increments[key] = Increment(window.end_s, amount if known is None else known.amount + amount)
