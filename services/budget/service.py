"""Budget rules: validation, creation with the window's stored usage counted once, updates, status and checks.

Every change runs in one transaction that first bumps the budget generation (store.py), so a budget made while
usage is being stored neither misses nor double counts an event: usage committed before the change is in its
backfill, usage committed after is counted live by ingest with the new budget.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from budgeting.decision import BudgetRule, Decision, Metric, Mode, WindowFigures, check_thresholds, decide
from budgeting.scope import RequestAttributes, Scope, ScopeError
from budgeting.windows import Period, UnknownTimeZoneError, Window, time_zone, window_at
from services.budget import store
from services.budget.changes import BudgetChanges
from services.budget.records import EVERYTHING, BudgetRecord, BudgetStatus, Visibility, scope_values
from services.budget.store import Increment, WindowRow
from services.budget.usage import stored_usage
from services.config import store as config_store
from services.errors import AbortedError, InvalidArgumentError, NotFoundError
from services.pagination import decode_page_token, encode_page_token, page_size
from services.storage import tables
from services.storage.uow import UnitOfWork
from services.timestamps import Clock, utc_now

log = structlog.get_logger("meterwire.budget")

MAX_DISPLAY_NAME_CHARS = 200
MAX_REQUEST_ID_CHARS = 128
MAX_LIMIT = 2**62
"""A limit far below int64's maximum, so used + one event's largest measure still fits a BIGINT."""
_E = TypeVar("_E", Metric, Period, Mode)
_T = TypeVar("_T", str, int)
UPDATABLE_FIELDS = frozenset({"display_name", "limit", "mode", "alert_threshold_percents"})


@dataclass(frozen=True, slots=True)
class BudgetDraft:
    """What a caller asks for; checked by `validated`."""

    display_name: str
    scope: Scope
    metric: int
    limit: int
    period: int
    time_zone: str
    mode: int
    thresholds: Sequence[int]


def _enum(kind: type[_E], value: int, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(member.name for member in kind)
        raise InvalidArgumentError(field, f"must be one of {names} (got {value})") from None


def validated(draft: BudgetDraft, *, budget_id: str = "") -> BudgetRule:
    """The rule a draft describes; InvalidArgumentError names the first field at fault."""
    name = draft.display_name.strip()
    if not name:
        raise InvalidArgumentError("budget.display_name", "is required")
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise InvalidArgumentError("budget.display_name", f"must be at most {MAX_DISPLAY_NAME_CHARS} characters")
    try:
        draft.scope.validate()
    except ScopeError as error:
        raise InvalidArgumentError(f"budget.{error.field}", error.problem) from None
    if not 0 < draft.limit <= MAX_LIMIT:
        raise InvalidArgumentError("budget.limit", f"must be positive and at most {MAX_LIMIT} (got {draft.limit})")
    try:
        time_zone(draft.time_zone)
        thresholds = check_thresholds(list(draft.thresholds), field="budget.alert_threshold_percents")
    except UnknownTimeZoneError as error:
        raise InvalidArgumentError("budget.time_zone", str(error)) from None
    except ValueError as error:
        field, _, problem = str(error).partition(": ")
        raise InvalidArgumentError(field, problem) from None
    return BudgetRule(
        budget_id=budget_id,
        display_name=name,
        scope=draft.scope,
        metric=_enum(Metric, draft.metric, "budget.metric"),
        limit=draft.limit,
        period=_enum(Period, draft.period, "budget.period"),
        time_zone=draft.time_zone or "UTC",
        mode=_enum(Mode, draft.mode, "budget.mode"),
        thresholds=thresholds,
    )


def figures_of(budget: BudgetRecord, window: Window, row: WindowRow | None) -> BudgetStatus:
    used = 0 if row is None else row.used
    return BudgetStatus(budget, WindowFigures(budget.rule, window, used), None if row is None else row.update_time_us)


class BudgetService:
    """Budgets and their windows; every method takes its own unit of work."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utc_now, changes: BudgetChanges | None = None) -> None:
        self._engine = engine
        self._clock = clock
        self._changes = changes
        """Told after every committed change, so budget snapshot streams look again."""

    def _changed(self) -> None:
        if self._changes is not None:
            self._changes.budgets_changed()

    async def create(self, draft: BudgetDraft, *, request_id: str = "") -> BudgetStatus:
        rule = validated(draft)
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise InvalidArgumentError("request_id", f"must be at most {MAX_REQUEST_ID_CHARS} characters")
        for _ in range(3):
            async with UnitOfWork(self._engine) as uow:
                connection = uow.connection
                await connection.run_sync(store.bump_generation)
                if request_id:
                    existing = await store.budget_id_of_request(connection, request_id)
                    if existing is not None:
                        await uow.rollback()
                        return await self.status(existing, visibility=EVERYTHING)
                environment_id = rule.scope.environment_id
                currency = ""
                if environment_id:
                    if not await self._environment_exists(connection, environment_id):
                        raise NotFoundError(f"budget.scope.environment_id: no environment {environment_id!r}")
                    if rule.metric is Metric.SPEND:
                        currency = await _currency(connection, environment_id)
                now = self._clock()
                window = window_at(rule.period, time_zone(rule.time_zone), now.timestamp())
                budget = BudgetRecord(
                    rule=replace(rule, budget_id=store.new_budget_id()),
                    currency=currency,
                    first_window_start=window.start_s,
                    revision=1,
                    create_time=now,
                    update_time=now,
                )
                try:
                    await store.insert_budget(connection, _row_values(budget, request_id=request_id))
                except IntegrityError:
                    continue  # the same request id committed meanwhile: read it above
                used = await stored_usage(connection, rule.scope, rule.metric, window)
                now_us = int(now.timestamp() * 1_000_000)
                changed = await connection.run_sync(
                    store.add_to_windows,
                    {(budget.budget_id, window.start_s): Increment(window.end_s, used)},
                    now_us=now_us,
                )
                alerts = await connection.run_sync(store.raise_alerts, {budget.budget_id: budget}, changed, now=now)
                await uow.commit()
            self._changed()
            log.info(
                "budget created",
                budget=budget.budget_id,
                environment=environment_id,
                scope=rule.scope.describe(),
                used=used,
                alerts=len(alerts),
            )
            return BudgetStatus(budget, WindowFigures(budget.rule, window, used), now_us)
        raise AbortedError("request_id: too many concurrent creates with this request id; retry")

    async def _environment_exists(self, connection: object, environment_id: str) -> bool:
        from sqlalchemy import select

        env = tables.environments
        assert hasattr(connection, "scalar")
        return (
            await connection.scalar(select(env.c.environment_id).where(env.c.environment_id == environment_id))
        ) is not None

    async def get(self, budget_id: str, *, visibility: Visibility) -> BudgetRecord:
        async with UnitOfWork(self._engine) as uow:
            budget = await store.get_budget(uow.connection, budget_id)
        return _visible_or_missing(budget, budget_id, visibility)

    async def status(self, budget_id: str, *, visibility: Visibility) -> BudgetStatus:
        async with UnitOfWork(self._engine) as uow:
            budget = _visible_or_missing(await store.get_budget(uow.connection, budget_id), budget_id, visibility)
            window = budget.window_at(self._clock().timestamp())
            row = await store.get_window(uow.connection, budget_id, window.start_s)
        return figures_of(budget, window, row)

    async def list_budgets(
        self, *, visibility: Visibility, requested_page_size: int, page_token: str
    ) -> tuple[list[BudgetStatus], str]:
        limit = page_size(requested_page_size)
        after = _page_position(page_token, "after", str) or ""
        async with UnitOfWork(self._engine) as uow:
            budgets = await store.list_budgets(
                uow.connection, visibility=visibility, after_budget_id=after, limit=limit + 1
            )
            more = len(budgets) > limit
            budgets = budgets[:limit]
            statuses = await self._current(uow.connection, budgets)
        return statuses, encode_page_token({"after": budgets[-1].budget_id}) if more else ""

    async def _current(self, connection: AsyncConnection, budgets: Sequence[BudgetRecord]) -> list[BudgetStatus]:
        now_s = self._clock().timestamp()
        windows = [budget.window_at(now_s) for budget in budgets]
        rows = await store.windows_of(
            connection,
            [budget.budget_id for budget in budgets],
            [window.start_s for window in windows],
        )
        return [
            figures_of(budget, window, rows.get((budget.budget_id, window.start_s)))
            for budget, window in zip(budgets, windows, strict=True)
        ]

    async def update(
        self, budget_id: str, *, fields: frozenset[str], draft: BudgetDraft, revision: int
    ) -> BudgetRecord:
        """Replaces `fields` (UPDATABLE_FIELDS) with the draft's values; `revision` 0 means "whatever is current"."""
        unknown = sorted(fields - UPDATABLE_FIELDS)
        if unknown:
            raise InvalidArgumentError(
                "update_mask",
                f"cannot update {', '.join(unknown)}: only {', '.join(sorted(UPDATABLE_FIELDS))} can change "
                "(scope, metric, period and time zone are fixed: make a new budget)",
            )
        if not fields:
            raise InvalidArgumentError(
                "update_mask", f"name the fields to update: {', '.join(sorted(UPDATABLE_FIELDS))}"
            )
        async with UnitOfWork(self._engine) as uow:
            connection = uow.connection
            current = await _at_revision(connection, budget_id, revision, prefix="budget.")
            rule = current.rule
            merged = BudgetDraft(
                display_name=draft.display_name if "display_name" in fields else rule.display_name,
                scope=rule.scope,
                metric=int(rule.metric),
                limit=draft.limit if "limit" in fields else rule.limit,
                period=int(rule.period),
                time_zone=rule.time_zone,
                mode=draft.mode if "mode" in fields else int(rule.mode),
                thresholds=draft.thresholds if "alert_threshold_percents" in fields else rule.thresholds,
            )
            new_rule = validated(merged, budget_id=budget_id)
            now = self._clock()
            values = {
                "display_name": new_rule.display_name,
                "limit_value": new_rule.limit,
                "mode": int(new_rule.mode),
                "alert_thresholds": json.dumps(list(new_rule.thresholds)),
            }
            if not await store.update_budget(connection, budget_id, revision=current.revision, values=values, now=now):
                raise AbortedError(f"budget.revision: budget {budget_id!r} changed meanwhile; read it again and retry")
            updated = replace(current, rule=new_rule, revision=current.revision + 1, update_time=now)
            # A lower limit or new thresholds may already be crossed: alert them now (each still only once).
            window = updated.window_at(now.timestamp())
            row = await store.get_window(connection, budget_id, window.start_s)
            if row is not None and row.used:
                await connection.run_sync(
                    store.raise_alerts, {budget_id: updated}, {(budget_id, window.start_s): (0, row.used)}, now=now
                )
            await uow.commit()
        self._changed()
        log.info("budget updated", budget=budget_id, fields=sorted(fields), revision=updated.revision)
        return updated

    async def delete(self, budget_id: str, *, revision: int) -> None:
        async with UnitOfWork(self._engine) as uow:
            connection = uow.connection
            await _at_revision(connection, budget_id, revision, prefix="")
            await store.delete_budget(connection, budget_id, now=self._clock())
            await uow.commit()
        self._changed()
        log.info("budget deleted", budget=budget_id)

    async def windows(
        self,
        budget_id: str,
        *,
        visibility: Visibility,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[BudgetStatus], str]:
        """Stored windows of a budget, newest first."""
        limit = page_size(requested_page_size)
        before = _page_position(page_token, "before", int)
        async with UnitOfWork(self._engine) as uow:
            budget = _visible_or_missing(await store.get_budget(uow.connection, budget_id), budget_id, visibility)
            rows = await store.list_windows(uow.connection, budget_id, before_start=before, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        statuses = [figures_of(budget, Window(row.window_start, row.window_end), row) for row in rows]
        return statuses, encode_page_token({"before": rows[-1].window_start}) if more else ""

    async def check(self, request: RequestAttributes) -> tuple[Decision, dict[str, BudgetStatus]]:
        """ALLOW, WARN or DENY from the stored counters of every budget the request matches, and their status
        by budget id."""
        async with UnitOfWork(self._engine) as uow:
            budgets = [
                budget
                for budget in await uow.connection.run_sync(store.active_budgets)
                if budget.rule.scope.matches(request)
            ]
            statuses = await self._current(uow.connection, budgets)
        decision = decide([status.figures for status in statuses])
        return decision, {status.budget.budget_id: status for status in statuses}


async def _at_revision(connection: AsyncConnection, budget_id: str, revision: int, *, prefix: str) -> BudgetRecord:
    """The budget about to change, after bumping the generation; `revision` 0: whatever is current. `prefix`: where
    the request keeps budget_id and revision ("budget." in an update)."""
    await connection.run_sync(store.bump_generation)
    current = await store.get_budget(connection, budget_id)
    if current is None:
        raise NotFoundError(f"{prefix}budget_id: no budget {budget_id!r}")
    if revision and revision != current.revision:
        raise AbortedError(
            f"{prefix}revision: budget {budget_id!r} is at revision {current.revision}, not {revision}; "
            "read it again and retry"
        )
    return current


def _visible_or_missing(budget: BudgetRecord | None, budget_id: str, visibility: Visibility) -> BudgetRecord:
    # A budget the caller may not see is reported as missing, so its existence does not leak either.
    if budget is None or not visibility.allows(budget.environment_id):
        raise NotFoundError(f"budget_id: no budget {budget_id!r}")
    return budget


def _page_position(token: str, key: str, kind: type[_T]) -> _T | None:
    position = decode_page_token(token)
    if position is None:
        return None
    value = position.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or set(position) != {key}:
        raise InvalidArgumentError("page_token", "is not a token this server issued; pass the last next_page_token")
    return value


async def _currency(connection: AsyncConnection, environment_id: str) -> str:
    stored = await config_store.get_version(connection, environment_id)
    if stored is not None and stored.config.HasField("pricing"):
        return str(stored.config.pricing.currency)
    return ""


def _row_values(budget: BudgetRecord, *, request_id: str) -> dict[str, object]:
    rule = budget.rule
    return {
        "budget_id": rule.budget_id,
        **scope_values(rule.scope),
        "display_name": rule.display_name,
        "metric": int(rule.metric),
        "limit_value": rule.limit,
        "currency": budget.currency,
        "period": int(rule.period),
        "time_zone": rule.time_zone,
        "mode": int(rule.mode),
        "alert_thresholds": json.dumps(list(rule.thresholds)),
        "first_window_start": budget.first_window_start,
        "revision": budget.revision,
        "create_request_id": request_id or None,
        "create_time": budget.create_time,
        "update_time": budget.update_time,
    }
