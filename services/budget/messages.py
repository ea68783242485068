"""BudgetService messages: requests to budget drafts and request attributes, records and decisions back to
messages (the servicer's translation, kept out of the domain)."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from budgeting.decision import DEFAULT_DENY_HTTP_STATUS, Decision, State, Verdict
from budgeting.scope import EVENT_SELECTORS, RequestAttributes, Scope
from meterwire.budget.v1 import budget_service_pb2 as pb
from meterwire.config.v1 import config_service_pb2 as config_pb
from services.auth import Principal, Role
from services.budget.records import AlertRecord, BudgetRecord, BudgetStatus
from services.budget.service import BudgetDraft
from services.budget.snapshots import BudgetSnapshot
from services.budget.webhooks import WebhookRecord
from services.timestamps import to_timestamp


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
