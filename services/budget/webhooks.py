"""Webhooks that receive budget alerts: their records, validation and storage, and the alert listing.

A webhook's secret is made here and shown once; deliveries sign each body with it (delivery.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from budgeting.decision import Mode
from services.budget.records import AlertRecord, Visibility
from services.budget.store import visible
from services.errors import InvalidArgumentError, NotFoundError
from services.pagination import decode_page_token, encode_page_token, page_size
from services.storage import tables
from services.storage.uow import UnitOfWork

MAX_URL_CHARS = 2000
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_hooks = tables.webhooks
_deliveries = tables.webhook_deliveries
_alerts = tables.budget_alerts
_budgets = tables.budgets


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    webhook_id: str
    url: str
    environment_id: str
    budget_id: str
    create_time: datetime
    pending_deliveries: int
    last_error: str
    last_attempt_time: datetime | None
    last_success_time: datetime | None

    @property
    def failing(self) -> bool:
        return bool(self.last_error) and (
            self.last_success_time is None
            or (self.last_attempt_time is not None and self.last_attempt_time > self.last_success_time)
        )


def check_url(url: str) -> str:
    """https, or http to a loopback receiver (tests, local relays); INVALID_ARGUMENT names what is wrong."""
    if not url:
        raise InvalidArgumentError("webhook.url", "is required")
    if len(url) > MAX_URL_CHARS:
        raise InvalidArgumentError("webhook.url", f"must be at most {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
        return url
    raise InvalidArgumentError("webhook.url", f"{url[:100]!r} must be https:// (http:// only to a loopback host)")


def _record(row: Any) -> WebhookRecord:
    return WebhookRecord(
        webhook_id=row.webhook_id,
        url=row.url,
        environment_id=row.environment_id or "",
        budget_id=row.budget_id or "",
        create_time=row.create_time,
        pending_deliveries=int(row.pending or 0),
        last_error=row.last_error,
        last_attempt_time=row.last_attempt_time,
        last_success_time=row.last_success_time,
    )


def _with_pending() -> sa.Select[Any]:
    pending = (
        sa.select(sa.func.count())
        .where(_deliveries.c.webhook_id == _hooks.c.webhook_id, _deliveries.c.delivered_time_us.is_(None))
        .scalar_subquery()
    )
    return sa.select(_hooks, pending.label("pending")).where(_hooks.c.delete_time.is_(None))


def _alert(row: Any) -> AlertRecord:
    return AlertRecord(
        alert_id=row.alert_id,
        budget_id=row.budget_id,
        window_start=int(row.window_start),
        threshold_percent=int(row.threshold_percent),
        used=int(row.used),
        limit=int(row.limit_value),
        mode=Mode(row.mode),
        create_time=row.create_time,
        display_name=row.display_name,
        environment_id=row.environment_id or "",
    )


def alerts_query() -> sa.Select[Any]:
    """Alerts with their budget's display name and environment."""
    return sa.select(_alerts, _budgets.c.display_name, _budgets.c.environment_id).join(
        _budgets, _budgets.c.budget_id == _alerts.c.budget_id
    )


class Webhooks:
    """Webhook CRUD and alert listings; every method takes its own unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, *, url: str, environment_id: str, budget_id: str, request_id: str, now: datetime
    ) -> tuple[WebhookRecord, str]:
        """The webhook and its signing secret ("" when `request_id` repeats an earlier create: shown once)."""
        check_url(url)
        async with UnitOfWork(self._engine) as uow:
            connection = uow.connection
            if request_id:
                existing = await connection.scalar(
                    sa.select(_hooks.c.webhook_id).where(_hooks.c.create_request_id == request_id)
                )
                if existing is not None:
                    return await self._get(connection, str(existing)), ""
            await _check_targets(connection, environment_id, budget_id)
            webhook_id = f"whk_{secrets.token_hex(10)}"
            secret = f"mwhsec_{secrets.token_urlsafe(32)}"
            try:
                await connection.execute(
                    _hooks.insert().values(
                        webhook_id=webhook_id,
                        url=url,
                        environment_id=environment_id or None,
                        budget_id=budget_id or None,
                        secret=secret,
                        create_request_id=request_id or None,
                        create_time=now,
                    )
                )
            except IntegrityError:
                raise InvalidArgumentError("request_id", "was used by a concurrent create; retry") from None
            record = await self._get(connection, webhook_id)
            await uow.commit()
        return record, secret

    async def _get(self, connection: AsyncConnection, webhook_id: str) -> WebhookRecord:
        row = (await connection.execute(_with_pending().where(_hooks.c.webhook_id == webhook_id))).one_or_none()
        if row is None:
            raise NotFoundError(f"webhook_id: no webhook {webhook_id!r}")
        return _record(row)

    async def list_webhooks(
        self, *, visibility: Visibility, requested_page_size: int, page_token: str
    ) -> tuple[list[WebhookRecord], str]:
        limit = page_size(requested_page_size)
        position = decode_page_token(page_token)
        after = ""
        if position is not None:
            value = position.get("after")
            if not isinstance(value, str) or set(position) != {"after"}:
                raise InvalidArgumentError("page_token", "is not a token this server issued")
            after = value
        query = _with_pending().where(_hooks.c.webhook_id > after).order_by(_hooks.c.webhook_id).limit(limit + 1)
        query = query.where(*visible(visibility, _hooks.c.environment_id))
        async with UnitOfWork(self._engine) as uow:
            records = [_record(row) for row in await uow.connection.execute(query)]
        more = len(records) > limit
        records = records[:limit]
        return records, encode_page_token({"after": records[-1].webhook_id}) if more else ""

    async def delete(self, webhook_id: str, *, now: datetime) -> None:
        async with UnitOfWork(self._engine) as uow:
            result = await uow.connection.execute(
                _hooks.update()
                .where(_hooks.c.webhook_id == webhook_id, _hooks.c.delete_time.is_(None))
                .values(delete_time=now)
            )
            if result.rowcount != 1:
                raise NotFoundError(f"webhook_id: no webhook {webhook_id!r}")
            # Nothing more goes out to a deleted webhook.
            await uow.connection.execute(
                _deliveries.delete().where(
                    _deliveries.c.webhook_id == webhook_id, _deliveries.c.delivered_time_us.is_(None)
                )
            )
            await uow.commit()

    async def alerts(
        self,
        *,
        visibility: Visibility,
        budget_id: str,
        requested_page_size: int,
        page_token: str,
    ) -> tuple[list[AlertRecord], str]:
        """Alerts newest first."""
        limit = page_size(requested_page_size)
        position = decode_page_token(page_token)
        query = alerts_query()
        if position is not None:
            before = position.get("before")
            if not isinstance(before, str) or set(position) != {"before"}:
                raise InvalidArgumentError("page_token", "is not a token this server issued")
            query = query.where(_alerts.c.alert_id < before)
        if budget_id:
            query = query.where(_alerts.c.budget_id == budget_id)
        query = query.where(*visible(visibility, _budgets.c.environment_id))
        async with UnitOfWork(self._engine) as uow:
            rows = await uow.connection.execute(query.order_by(_alerts.c.alert_id.desc()).limit(limit + 1))
            alerts = [_alert(row) for row in rows]
        more = len(alerts) > limit
        alerts = alerts[:limit]
        return alerts, encode_page_token({"before": alerts[-1].alert_id}) if more else ""

    async def alerts_after(self, alert_id: str, *, visibility: Visibility) -> list[AlertRecord]:
        """Alerts stored after `alert_id` (ids sort by time), oldest first: what a watcher has not seen."""
        query = alerts_query().where(_alerts.c.alert_id > alert_id, *visible(visibility, _budgets.c.environment_id))
        async with UnitOfWork(self._engine) as uow:
            rows = await uow.connection.execute(query.order_by(_alerts.c.alert_id).limit(1000))
            return [_alert(row) for row in rows]


async def _check_targets(connection: AsyncConnection, environment_id: str, budget_id: str) -> None:
    if environment_id:
        env = tables.environments
        found = await connection.scalar(sa.select(env.c.environment_id).where(env.c.environment_id == environment_id))
        if found is None:
            raise NotFoundError(f"webhook.environment_id: no environment {environment_id!r}")
    if budget_id:
        owner = (
            await connection.execute(
                sa.select(_budgets.c.environment_id).where(
                    _budgets.c.budget_id == budget_id, _budgets.c.delete_time.is_(None)
                )
            )
        ).one_or_none()
        if owner is None:
            raise NotFoundError(f"webhook.budget_id: no budget {budget_id!r}")
        if environment_id and (owner[0] or "") != environment_id:
            raise InvalidArgumentError(
                "webhook.budget_id", f"budget {budget_id!r} is not in environment {environment_id!r}"
            )
