"""gRPC adapter for meterwire.budget.v1.BudgetService: requests to budget rules and records back to messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from budgeting.decision import Decision, State, Verdict
from budgeting.scope import EVENT_SELECTORS, RequestAttributes, Scope
from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.budget.v1 import budget_service_pb2_grpc as pb_grpc
from meterwire.config.v1 import config_service_pb2 as config_pb
from services.auth import Principal, Role, current_principal, requires
from services.budget.records import AlertRecord, BudgetRecord, BudgetStatus, Visibility
from services.budget.service import BudgetDraft, BudgetService
from services.budget.snapshots import BudgetSnapshot, BudgetSnapshots
from services.budget.webhooks import WebhookRecord, Webhooks
from services.config.hub import ConfigHub
from services.errors import InvalidArgumentError, PermissionDeniedError
from services.timestamps import to_timestamp

ALERT_LOOKBACK_US = 30_000_000
"""How far back a WatchBudgetAlerts poll looks for alerts committed late (ids are made before the commit)."""
DEFAULT_DENY_HTTP_STATUS = 429


def _seconds(moment_s: int) -> Timestamp:
    return Timestamp(seconds=moment_s)


def scope_from_proto(scope: pb.Scope) -> Scope:
    return Scope(
        environment_id=scope.environment_id,
        gateway_id=scope.gateway_id,
        tags=tuple(scope.tags.items()),
        **{name: getattr(scope, name) for name in EVENT_SELECTORS},
    )


def scope_to_proto(scope: Scope) -> pb.Scope:
    return pb.Scope(
        environment_id=scope.environment_id,
        gateway_id=scope.gateway_id,
        tags=dict(scope.tags),
        **{name: getattr(scope, name) for name in EVENT_SELECTORS},
    )


def draft_from_proto(budget: pb.Budget) -> BudgetDraft:
    return BudgetDraft(
        display_name=budget.display_name,
        scope=scope_from_proto(budget.scope),
        metric=budget.metric,
        limit=budget.limit,
        period=budget.period,
        time_zone=budget.time_zone,
        mode=budget.mode,
        thresholds=list(budget.alert_threshold_percents),
    )


def budget_to_proto(budget: BudgetRecord) -> pb.Budget:
    rule = budget.rule
    return pb.Budget(
        budget_id=rule.budget_id,
        display_name=rule.display_name,
        scope=scope_to_proto(rule.scope),
        metric=int(rule.metric),  # type: ignore[arg-type]
        limit=rule.limit,
        currency=budget.currency,
        period=int(rule.period),  # type: ignore[arg-type]
        time_zone=rule.time_zone,
        mode=int(rule.mode),  # type: ignore[arg-type]
        alert_threshold_percents=list(rule.thresholds),
        create_time=to_timestamp(budget.create_time),
        update_time=to_timestamp(budget.update_time),
        revision=budget.revision,
    )


def status_to_proto(status: BudgetStatus) -> pb.WindowStatus:
    figures = status.figures
    message = pb.WindowStatus(
        budget_id=status.budget.budget_id,
        window_start_time=_seconds(figures.window.start_s),
        used=figures.used,
        limit=figures.rule.limit,
        remaining=figures.remaining,
        state=int(figures.state),  # type: ignore[arg-type]
        crossed_threshold_percent=figures.crossed_threshold,
    )
    if figures.window.end_s is not None:
        message.window_end_time.CopyFrom(_seconds(figures.window.end_s))
    if status.update_time_us is not None:
        seconds, micros = divmod(status.update_time_us, 1_000_000)
        message.update_time.CopyFrom(Timestamp(seconds=seconds, nanos=micros * 1000))
    return message


def attributes_from_proto(request: pb.RequestAttributes, principal: Principal) -> RequestAttributes:
    """The request's attributes; a gateway token's own environment and gateway fill what it left empty."""
    environment_id = request.environment_id or principal.environment_id or ""
    gateway_id = request.gateway_id or (principal.gateway_id if principal.role is Role.GATEWAY else "") or ""
    return RequestAttributes(
        environment_id=environment_id,
        gateway_id=gateway_id,
        tags=dict(request.tags),
        **{name: getattr(request, name) for name in EVENT_SELECTORS},
    )


@dataclass(frozen=True, slots=True)
class DenyAnswer:
    """How an environment's gateways answer a denied request (its config's budget_enforcement)."""

    http_status: int = DEFAULT_DENY_HTTP_STATUS
    message: str = ""
    """Put before the explanation when set."""

    @classmethod
    def of(cls, enforcement: config_pb.BudgetEnforcement | None) -> DenyAnswer:
        if enforcement is None:
            return cls()
        return cls(enforcement.deny_http_status or DEFAULT_DENY_HTTP_STATUS, enforcement.deny_message)


def decision_to_proto(
    decision: Decision, budgets: dict[str, BudgetStatus], now_s: float, deny: DenyAnswer = DenyAnswer()
) -> pb.CheckBudgetResponse:
    response = pb.CheckBudgetResponse(
        decision=int(decision.verdict),  # type: ignore[arg-type]
        verdicts=[
            pb.Verdict(
                budget=budget_to_proto(budgets[f.rule.budget_id].budget),
                status=status_to_proto(budgets[f.rule.budget_id]),
            )
            for f in decision.matched
        ],
    )
    denied = decision.denied_by
    if decision.verdict is Verdict.DENY and denied is not None:
        rule = denied.rule
        response.http_status = deny.http_status
        response.denied_by_budget_id = rule.budget_id
        explanation = (
            f"budget {rule.display_name!r} ({rule.budget_id}, {rule.scope.describe()}) is exhausted: "
            f"used {denied.used} of {rule.limit} {rule.metric.name.lower()} this {rule.period.name.lower()}"
        )
        response.message = f"{deny.message}: {explanation}" if deny.message else explanation
        retry = denied.retry_after_s(now_s)
        if retry is not None:
            response.retry_after.seconds = retry
    elif decision.verdict is Verdict.WARN:
        response.message = "; ".join(
            f"budget {f.rule.display_name!r} ({f.rule.budget_id}) is "
            + ("over its limit" if f.state is State.EXCEEDED else f"at {f.crossed_threshold}% of its limit")
            for f in decision.warned_by
        )
    return response


def snapshot_to_proto(snapshot: BudgetSnapshot) -> pb.BudgetSnapshot:
    return pb.BudgetSnapshot(
        budgets=[
            pb.Verdict(budget=budget_to_proto(status.budget), status=status_to_proto(status))
            for status in snapshot.statuses
        ],
        included_through_sequence=snapshot.included.through,
        included_ranges=[pb.SequenceRange(first=first, last=last) for first, last in snapshot.included.ranges],
        snapshot_time=to_timestamp(snapshot.snapshot_time),
        leases=[
            pb.BudgetLease(
                budget_id=lease.budget_id,
                window_start_time=_seconds(lease.window_start),
                allowance=lease.allowance,
                sharing_gateways=lease.sharing_gateways,
            )
            for lease in snapshot.leases
        ],
    )


def alert_to_proto(alert: AlertRecord) -> pb.Alert:
    return pb.Alert(
        alert_id=alert.alert_id,
        budget_id=alert.budget_id,
        window_start_time=_seconds(alert.window_start),
        threshold_percent=alert.threshold_percent,
        used=alert.used,
        limit=alert.limit,
        mode=int(alert.mode),  # type: ignore[arg-type]
        create_time=to_timestamp(alert.create_time),
        display_name=alert.display_name,
        environment_id=alert.environment_id,
    )


def webhook_to_proto(webhook: WebhookRecord) -> pb.Webhook:
    message = pb.Webhook(
        webhook_id=webhook.webhook_id,
        url=webhook.url,
        environment_id=webhook.environment_id,
        budget_id=webhook.budget_id,
        create_time=to_timestamp(webhook.create_time),
        delivery_state=pb.WEBHOOK_DELIVERY_STATE_FAILING if webhook.failing else pb.WEBHOOK_DELIVERY_STATE_OK,
        pending_deliveries=webhook.pending_deliveries,
        last_error=webhook.last_error,
    )
    if webhook.last_attempt_time is not None:
        message.last_attempt_time.CopyFrom(to_timestamp(webhook.last_attempt_time))
    if webhook.last_success_time is not None:
        message.last_success_time.CopyFrom(to_timestamp(webhook.last_success_time))
    return message


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
