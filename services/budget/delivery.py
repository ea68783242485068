"""Delivers budget alerts to webhooks from the durable outbox (webhook_deliveries), at least once.

Each round claims the due deliveries (pushing their next attempt out by the timeout first, so a replica that
dies mid-send leaves them to be retried, and two replicas never send the same delivery in one round), POSTs
them concurrently, and records the outcome: delivered, or the next attempt after exponential backoff with full
jitter, capped by `webhook_max_backoff`. Outbox rows live in the database, so nothing is lost across restarts;
receivers dedupe by the `Idempotency-Key` header (the alert id), which is the same on every attempt.

Body: the alert as JSON. Headers: `Idempotency-Key`, `X-Meterwire-Signature: sha256=<HMAC-SHA256 of the body
with the webhook's secret, hex>`, `X-Meterwire-Attempt`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
import structlog
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from budgeting.decision import Metric
from budgeting.scope import SELECTORS
from budgeting.windows import Period
from services.jobs import PeriodicJob
from services.settings import ServerSettings
from services.storage import tables
from services.storage.uow import UnitOfWork

log = structlog.get_logger("meterwire.budget.webhooks")

DELIVERIES = Counter("meterwire_webhook_deliveries_total", "Webhook delivery attempts by outcome.", ["outcome"])
SIGNATURE_HEADER: Final = "X-Meterwire-Signature"
_BASE_BACKOFF_S: Final = 1.0
_ERROR_CHARS: Final = 300


_d = tables.webhook_deliveries
_h = tables.webhooks
_a = tables.budget_alerts
_b = tables.budgets


def signature(secret: str, body: bytes) -> str:
    """The X-Meterwire-Signature value of a body: receivers recompute it with their copy of the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Delivery:
    webhook_id: str
    alert_id: str
    url: str
    secret: str
    attempt: int
    body: bytes


def alert_body(row: Any) -> bytes:
    """The JSON an alert is delivered as (stable keys, sorted)."""
    scope = {name: value for name in SELECTORS if (value := getattr(row, name))}
    if row.tags:
        scope["tags"] = json.loads(row.tags)
    document = {
        "type": "budget.threshold_crossed",
        "alert_id": row.alert_id,
        "budget_id": row.budget_id,
        "display_name": row.display_name,
        "scope": scope,
        "metric": Metric(row.metric).name.lower(),
        "period": Period(row.period).name.lower(),
        "mode": "hard_stop" if row.mode == 1 else "warn_only",
        "threshold_percent": row.threshold_percent,
        "used": row.used,
        "limit": row.limit_value,
        "currency": row.currency,
        "window_start_time": datetime.fromtimestamp(row.window_start, tz=UTC).isoformat(),
        "create_time": row.create_time.isoformat(),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _post(delivery: Delivery, timeout_s: float) -> None:
    """One blocking POST (run in a thread); raises on anything but a 2xx answer."""
    request = urllib.request.Request(
        delivery.url,
        data=delivery.body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "meterwire-webhooks/1",
            "Idempotency-Key": delivery.alert_id,
            SIGNATURE_HEADER: signature(delivery.secret, delivery.body),
            "X-Meterwire-Attempt": str(delivery.attempt),
        },
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read(1024)


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)[:_ERROR_CHARS]
    return f"{type(error).__name__}: {error}"[:_ERROR_CHARS]


class WebhookDeliverer:
    """One round at a time: claim what is due, send it, record the outcome."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: ServerSettings,
        *,
        clock: Callable[[], float] = time.time,
        send: Callable[[Delivery, float], None] = _post,
    ) -> None:
        self._engine = engine
        self._timeout_s = settings.webhook_timeout.total_seconds()
        self._max_backoff_s = settings.webhook_max_backoff.total_seconds()
        self._batch = settings.webhook_deliveries_per_round
        self._interval = settings.webhook_delivery_interval
        self._clock = clock
        self._send = send

    def job(self) -> PeriodicJob:
        return PeriodicJob("webhook-delivery", self._interval, self.deliver_due, run_at_start=True)

    async def deliver_due(self) -> int:
        """Sends every delivery due now (up to one round's worth); returns how many were sent successfully."""
        claimed = await self._claim()
        if not claimed:
            return 0
        outcomes = await asyncio.gather(
            *(asyncio.to_thread(self._send, delivery, self._timeout_s) for delivery in claimed), return_exceptions=True
        )
        await self._record(claimed, outcomes)
        return sum(1 for outcome in outcomes if not isinstance(outcome, BaseException))

    async def _claim(self) -> list[Delivery]:
        now_us = int(self._clock() * 1_000_000)
        lease_us = int((self._timeout_s + 5) * 1_000_000)
        due = (
            sa.select(_d.c.webhook_id, _d.c.alert_id)
            .where(_d.c.delivered_time_us.is_(None), _d.c.next_attempt_time_us <= now_us)
            .order_by(_d.c.next_attempt_time_us)
            .limit(self._batch)
        )
        async with UnitOfWork(self._engine) as uow:
            connection = uow.connection
            candidates = [tuple(row) for row in await connection.execute(due)]
            if not candidates:
                return []
            # Conditional on still being due: of two replicas claiming at once, one wins each row.
            result = await connection.execute(
                _d.update()
                .where(
                    sa.tuple_(_d.c.webhook_id, _d.c.alert_id).in_(candidates),
                    _d.c.delivered_time_us.is_(None),
                    _d.c.next_attempt_time_us <= now_us,
                )
                .values(next_attempt_time_us=now_us + lease_us, attempts=_d.c.attempts + 1)
                .returning(_d.c.webhook_id, _d.c.alert_id, _d.c.attempts)
            )
            claimed = [(str(webhook_id), str(alert_id), int(attempts)) for webhook_id, alert_id, attempts in result]
            if not claimed:
                return []
            details = await connection.execute(
                sa.select(
                    _h.c.webhook_id,
                    _h.c.url,
                    _h.c.secret,
                    _a.c.alert_id,
                    _a.c.budget_id,
                    _a.c.threshold_percent,
                    _a.c.used,
                    _a.c.limit_value,
                    _a.c.mode,
                    _a.c.window_start,
                    _a.c.create_time,
                    _b.c.display_name,
                    _b.c.metric,
                    _b.c.period,
                    _b.c.currency,
                    _b.c.environment_id,
                    *(_b.c[name] for name in SELECTORS[1:]),
                    _b.c.tags,
                )
                .select_from(_a.join(_b, _b.c.budget_id == _a.c.budget_id))
                .join(_h, sa.true())
                .where(sa.tuple_(_h.c.webhook_id, _a.c.alert_id).in_([(w, a) for w, a, _ in claimed]))
            )
            rows = {(row.webhook_id, row.alert_id): row for row in details}
            await uow.commit()
        return [
            Delivery(
                webhook_id,
                alert_id,
                rows[(webhook_id, alert_id)].url,
                rows[(webhook_id, alert_id)].secret,
                attempts,
                alert_body(rows[(webhook_id, alert_id)]),
            )
            for webhook_id, alert_id, attempts in claimed
            if (webhook_id, alert_id) in rows
        ]

    async def _record(self, deliveries: list[Delivery], outcomes: list[BaseException | None]) -> None:
        now = self._clock()
        now_us = int(now * 1_000_000)
        moment = datetime.fromtimestamp(now, tz=UTC)
        async with UnitOfWork(self._engine) as uow:
            connection = uow.connection
            for delivery, outcome in zip(deliveries, outcomes, strict=True):
                where = sa.and_(_d.c.webhook_id == delivery.webhook_id, _d.c.alert_id == delivery.alert_id)
                if outcome is None:
                    DELIVERIES.labels("delivered").inc()
                    await connection.execute(_d.update().where(where).values(delivered_time_us=now_us, last_error=""))
                    await connection.execute(
                        _h.update()
                        .where(_h.c.webhook_id == delivery.webhook_id)
                        .values(last_attempt_time=moment, last_success_time=moment, last_error="")
                    )
                    continue
                DELIVERIES.labels("failed").inc()
                error = _describe(outcome)
                backoff = random.uniform(0, min(self._max_backoff_s, _BASE_BACKOFF_S * 2 ** min(delivery.attempt, 30)))
                await connection.execute(
                    _d.update()
                    .where(where)
                    .values(next_attempt_time_us=now_us + int(backoff * 1_000_000), last_error=error)
                )
                await connection.execute(
                    _h.update()
                    .where(_h.c.webhook_id == delivery.webhook_id)
                    .values(last_attempt_time=moment, last_error=error)
                )
                log.warning(
                    "webhook delivery failed; retrying",
                    webhook=delivery.webhook_id,
                    alert=delivery.alert_id,
                    attempt=delivery.attempt,
                    error=error,
                    retry_in_s=round(backoff, 1),
                )
            await uow.commit()
