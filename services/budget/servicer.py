"""gRPC adapter for meterwire.budget.v1.BudgetService: requests to budget rules and records back to messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from budgeting.scope import RequestAttributes
from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from services.auth import Principal, Role, current_principal, requires
from services.budget.messages import (
    DenyAnswer,
    alert_to_proto,
    attributes_from_proto,
    budget_to_proto,
    decision_to_proto,
    draft_from_proto,
    snapshot_to_proto,
    status_to_proto,
    webhook_to_proto,
)
from services.budget.records import Visibility
from services.budget.service import BudgetService
from services.budget.snapshots import BudgetSnapshots
from services.budget.webhooks import Webhooks
from services.config.hub import ConfigHub
from services.errors import InvalidArgumentError, PermissionDeniedError

ALERT_LOOKBACK_US = 30_000_000
"""How far back a WatchBudgetAlerts poll looks for alerts committed late (ids are made before the commit)."""


def alert_time_us(alert_id: str) -> int:
    """The creation time (epoch microseconds) an alert id starts with (store.new_alert_id)."""
    try:
        return int(alert_id[4:20], 16)
    except ValueError:
        raise InvalidArgumentError("after_alert_id", f"{alert_id[:40]!r} is not an alert id") from None


def alert_id_floor(moment_us: int) -> str:
    """The smallest alert id made at `moment_us` or later."""
    return f"alr_{max(0, moment_us):016x}"


class BudgetServicer(pb_grpc.BudgetServiceServicer):
    """Budgets for admin tokens, their status for reporters (only their environments), checks for gateways."""

    def __init__(
        self,
        budgets: BudgetService,
        webhooks: Webhooks,
        *,
        alert_poll_interval: timedelta,
        snapshots: BudgetSnapshots,
        configs: ConfigHub | None = None,
        heartbeat_interval: timedelta = timedelta(seconds=10),
    ) -> None:
        self._budgets = budgets
        self._configs = configs
        self._snapshots = snapshots
        self._heartbeat_interval = heartbeat_interval
        """How often snapshots are refreshed when no config hub tells an environment's heartbeat interval."""
        self._webhooks = webhooks
        self._alert_poll_s = alert_poll_interval.total_seconds()

    @requires(Role.ADMIN)
    async def CreateBudget(
        self, request: pb.CreateBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateBudgetResponse:
        status = await self._budgets.create(draft_from_proto(request.budget), request_id=request.request_id)
        return pb.CreateBudgetResponse(budget=budget_to_proto(status.budget), status=status_to_proto(status))

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetBudget(
        self, request: pb.GetBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBudgetResponse:
        budget = await self._budgets.get(request.budget_id, visibility=_visibility(current_principal(), ()))
        return pb.GetBudgetResponse(budget=budget_to_proto(budget))

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListBudgets(
        self, request: pb.ListBudgetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBudgetsResponse:
        visible = _visibility(current_principal(), request.environment_ids)
        statuses, token = await self._budgets.list_budgets(
            visibility=visible, requested_page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListBudgetsResponse(
            budgets=[
                pb.BudgetWithStatus(budget=budget_to_proto(status.budget), status=status_to_proto(status))
                for status in statuses
            ],
            next_page_token=token,
        )

    @requires(Role.ADMIN)
    async def UpdateBudget(
        self, request: pb.UpdateBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateBudgetResponse:
        budget = await self._budgets.update(
            request.budget.budget_id,
            fields=frozenset(path for path in request.update_mask.paths),
            draft=draft_from_proto(request.budget),
            revision=request.budget.revision,
        )
        return pb.UpdateBudgetResponse(budget=budget_to_proto(budget))

    @requires(Role.ADMIN)
    async def DeleteBudget(
        self, request: pb.DeleteBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteBudgetResponse:
        await self._budgets.delete(request.budget_id, revision=request.revision)
        return pb.DeleteBudgetResponse()

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetBudgetStatus(
        self, request: pb.GetBudgetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetBudgetStatusResponse:
        status = await self._budgets.status(request.budget_id, visibility=_visibility(current_principal(), ()))
        return pb.GetBudgetStatusResponse(budget=budget_to_proto(status.budget), status=status_to_proto(status))

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListBudgetWindows(
        self, request: pb.ListBudgetWindowsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBudgetWindowsResponse:
        statuses, token = await self._budgets.windows(
            request.budget_id,
            visibility=_visibility(current_principal(), ()),
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListBudgetWindowsResponse(windows=[status_to_proto(s) for s in statuses], next_page_token=token)

    @requires(Role.ADMIN, Role.GATEWAY)
    async def CheckBudget(
        self, request: pb.CheckBudgetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CheckBudgetResponse:
        principal = current_principal()
        attributes = attributes_from_proto(request.request, principal)
        principal.require_environment(attributes.environment_id, field="request.environment_id")
        if principal.role is Role.GATEWAY and attributes.gateway_id != principal.gateway_id:
            raise PermissionDeniedError(
                f"request.gateway_id: this gateway token ({principal.token_id}) may only check for its own gateway "
                f"{principal.gateway_id!r}"
            )
        decision, statuses = await self._budgets.check(attributes)
        return decision_to_proto(decision, statuses, datetime.now(UTC).timestamp(), self._deny_answer(attributes))

    def _deny_answer(self, request: RequestAttributes) -> DenyAnswer:
        stored = None if self._configs is None else self._configs.latest(request.environment_id)
        if stored is None or not stored.config.HasField("budget_enforcement"):
            return DenyAnswer()
        return DenyAnswer.of(stored.config.budget_enforcement)

    @requires(Role.GATEWAY)
    async def WatchBudgetStates(
        self, request: pb.WatchBudgetStatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchBudgetStatesResponse]:
        principal = current_principal()
        principal.require_environment(request.environment_id)
        if principal.gateway_id is None:  # @requires(Role.GATEWAY) admits only tokens bound to a gateway
            raise PermissionDeniedError("WatchBudgetStates needs a gateway token")
        environment_id, gateway_id = request.environment_id, principal.gateway_id
        configs = self._configs

        def refresh_interval() -> timedelta:
            return self._heartbeat_interval if configs is None else configs.heartbeat_interval(environment_id)

        # aclosing: a call cancelled while sending still ends the watch (and its subscription) at once.
        watch = self._snapshots.watch(environment_id, gateway_id, refresh_interval=refresh_interval)
        async with aclosing(watch) as snapshots:
            async for snapshot in snapshots:
                yield pb.WatchBudgetStatesResponse(snapshot=snapshot_to_proto(snapshot))

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListBudgetAlerts(
        self, request: pb.ListBudgetAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListBudgetAlertsResponse:
        visible = _visibility(current_principal(), request.environment_ids)
        alerts, token = await self._webhooks.alerts(
            visibility=visible,
            budget_id=request.budget_id,
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListBudgetAlertsResponse(alerts=[alert_to_proto(a) for a in alerts], next_page_token=token)

    @requires(Role.ADMIN, Role.REPORTER)
    async def WatchBudgetAlerts(
        self, request: pb.WatchBudgetAlertsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchBudgetAlertsResponse]:
        visible = _visibility(current_principal(), request.environment_ids)
        if request.after_alert_id and (
            not request.after_alert_id.startswith("alr_") or len(request.after_alert_id) < 20
        ):
            raise InvalidArgumentError("after_alert_id", "is not an alert id (they start with 'alr_')")
        # Alert ids sort by creation time. A replica may commit an alert a little after a newer one was sent, so
        # every poll looks back ALERT_LOOKBACK_US from the newest sent and skips the ids already sent.
        floor = request.after_alert_id or alert_id_floor(time.time_ns() // 1000)
        newest_us = alert_time_us(floor)
        sent: dict[str, int] = {}
        while True:
            lower = alert_id_floor(newest_us - ALERT_LOOKBACK_US)
            for alert in await self._webhooks.alerts_after(lower, visibility=visible):
                if alert.alert_id <= floor or alert.alert_id in sent:
                    continue
                moment = alert_time_us(alert.alert_id)
                sent[alert.alert_id] = moment
                newest_us = max(newest_us, moment)
                yield pb.WatchBudgetAlertsResponse(alert=alert_to_proto(alert))
            for alert_id in [key for key, moment in sent.items() if moment < newest_us - 2 * ALERT_LOOKBACK_US]:
                del sent[alert_id]
            await asyncio.sleep(self._alert_poll_s)

    @requires(Role.ADMIN)
    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateWebhookResponse:
        webhook = request.webhook
        record, secret = await self._webhooks.create(
            url=webhook.url,
            environment_id=webhook.environment_id,
            budget_id=webhook.budget_id,
            request_id=request.request_id,
            now=datetime.now(UTC),
        )
        return pb.CreateWebhookResponse(webhook=webhook_to_proto(record), secret=secret)

    @requires(Role.ADMIN)
    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListWebhooksResponse:
        visible = _visibility(current_principal(), request.environment_ids)
        records, token = await self._webhooks.list_webhooks(
            visibility=visible, requested_page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListWebhooksResponse(webhooks=[webhook_to_proto(r) for r in records], next_page_token=token)

    @requires(Role.ADMIN)
    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteWebhookResponse:
        await self._webhooks.delete(request.webhook_id, now=datetime.now(UTC))
        return pb.DeleteWebhookResponse()


def _visibility(principal: Principal, requested: Iterable[str]) -> Visibility:
    """What a listing shows the caller: the requested environments (each must be allowed) or all it may see,
    and organization-wide budgets when it may see every environment."""
    environment_ids = principal.visible_environments(requested, field="environment_ids")
    return Visibility(environment_ids, organization=principal.visible_environments((), field="") is None)
