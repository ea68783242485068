"""How many entries each repeated or map field of a request may hold: one table, checked as requests enter.

Every repeated and map field reachable from a request of a control-plane service is listed, either in
`ENTRY_LIMITS` (checked here, before the service sees the request: INVALID_ARGUMENT naming the field) or in
`LIMITS_CHECKED_BY_SERVICE` (a limit the service itself enforces with its own semantics, such as one usage
event rejected in its ack). tests/services/test_request_limits.py fails when a contract grows a repeated field
that is in neither, so no list reaches SQL or a loop unbounded. README's "Request limits" table documents them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from budgeting.scope import MAX_TAG_SELECTORS
from meterwire.common.v1 import filter_pb2, usage_pb2
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from services.config.validation import MAX_ALIASES, MAX_DISABLED_KEYS, MAX_PRICES, MAX_TARGETS
from services.errors import InvalidArgumentError
from services.reporting.filters import MAX_GROUP_BY
from services.telemetry.validation import MAX_CATEGORIES, MAX_TAGS

MAX_ENVIRONMENT_IDS: Final = 100
"""Environments named in one request (a token's scope, a listing, a filter)."""
MAX_FILTER_VALUES: Final = 100
"""Values of one UsageFilter dimension (gateways, models, providers, API keys, users, routes): an SQL IN list."""
MAX_FILTER_TAGS: Final = 16
"""Tag matches in one UsageFilter; each is a subquery, and SQLite refuses deep expression trees."""
MAX_ALERT_THRESHOLDS: Final = 10
"""Alert thresholds of one budget."""
MAX_UPDATE_MASK_PATHS: Final = 20
"""Paths of one update_mask (a budget has fewer fields than this)."""
MAX_BUDGET_ENFORCEMENT: Final = 100
"""Budgets whose enforcement counters one heartbeat reports."""


def _enum_size(values: Sequence[int]) -> int:
    # A repeated enum needs each value at most once.
    return len(values)


ENTRY_LIMITS: Final[Mapping[str, int]] = {
    "meterwire.admin.v1.CreateTokenRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.budget.v1.Budget.alert_threshold_percents": MAX_ALERT_THRESHOLDS,
    "google.protobuf.FieldMask.paths": MAX_UPDATE_MASK_PATHS,
    "meterwire.budget.v1.ListBudgetsRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.budget.v1.RequestAttributes.tags": MAX_TAGS,
    "meterwire.budget.v1.Scope.tags": MAX_TAG_SELECTORS,
    "meterwire.budget.v1.ListBudgetAlertsRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.budget.v1.WatchBudgetAlertsRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.budget.v1.ListWebhooksRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    # The config service checks these too, among all of a config's problems; checking the counts here first
    # keeps the walk below bounded.
    "meterwire.config.v1.EnvironmentConfig.aliases": MAX_ALIASES,
    "meterwire.config.v1.ModelAlias.targets": MAX_TARGETS,
    "meterwire.config.v1.PricingTable.models": MAX_PRICES,
    "meterwire.config.v1.ModelPrice.category_micros_per_million": MAX_CATEGORIES,
    "meterwire.config.v1.EnvironmentConfig.disabled_api_key_ids": MAX_DISABLED_KEYS,
    "meterwire.heartbeat.v1.AgentState.budget_enforcement": MAX_BUDGET_ENFORCEMENT,
    "meterwire.heartbeat.v1.ListGatewaysRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.heartbeat.v1.ListGatewaysRequest.statuses": _enum_size(heartbeat_pb.GatewayStatus.values()),
    "meterwire.heartbeat.v1.WatchGatewaysRequest.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.common.v1.UsageFilter.environment_ids": MAX_ENVIRONMENT_IDS,
    "meterwire.common.v1.UsageFilter.gateway_ids": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.requested_models": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.resolved_models": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.providers": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.api_key_ids": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.user_ids": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.routes": MAX_FILTER_VALUES,
    "meterwire.common.v1.UsageFilter.credential_types": _enum_size(usage_pb2.CredentialType.values()),
    "meterwire.common.v1.UsageFilter.status_classes": _enum_size(filter_pb2.StatusClass.values()),
    "meterwire.common.v1.UsageFilter.request_types": _enum_size(usage_pb2.RequestType.values()),
    "meterwire.common.v1.UsageFilter.tags": MAX_FILTER_TAGS,
    "meterwire.reporting.v1.GetUsageBreakdownRequest.group_by": MAX_GROUP_BY,
    "meterwire.reporting.v1.GetUsageTimeSeriesRequest.metrics": _enum_size(reporting_pb.Metric.values()),
    "meterwire.reporting.v1.ExportUsageRequest.group_by": MAX_GROUP_BY,
}
"""Field full name -> most entries; more is INVALID_ARGUMENT before the service runs."""

LIMITS_CHECKED_BY_SERVICE: Final[Mapping[str, str]] = {
    "meterwire.telemetry.v1.StreamUsageRequest.events": "ingest_max_batch_events (setting): the batch is refused",
    "meterwire.telemetry.v1.ReportUsageRequest.events": "ingest_max_batch_events (setting): the batch is refused",
    "meterwire.common.v1.UsageEvent.tags": f"{MAX_TAGS} per event: the event is rejected in the ack",
    "meterwire.common.v1.TokenCounts.categories": f"{MAX_CATEGORIES} per event: the event is rejected in the ack",
}
"""Field full name -> the limit its service enforces itself (per event, or from a setting); not walked here."""


@dataclass(frozen=True, slots=True)
class _Step:
    field: FieldDescriptor
    limit: int | None
    """None: a singular message field, walked when set."""
    inner: tuple[_Step, ...]
    """The checks inside each entry (repeated messages) or inside the message (singular)."""


_plans: dict[str, tuple[_Step, ...]] = {}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def plan_for(descriptor: Descriptor, *, visiting: frozenset[str] = frozenset()) -> tuple[_Step, ...]:
    """The checks a message type needs; LookupError names a repeated field missing from both tables."""
    name = descriptor.full_name
    if name in _plans:
        return _plans[name]
    steps = []
    for field in descriptor.fields:
        entry_type = field.message_type
        walks_into = (
            entry_type is not None
            and not _is_map(field)
            and entry_type.full_name not in visiting | {name}  # a recursive type is walked once
        )
        inner = plan_for(entry_type, visiting=visiting | {name}) if walks_into and entry_type else ()
        if field.is_repeated:
            if field.full_name in LIMITS_CHECKED_BY_SERVICE:
                continue
            if field.full_name not in ENTRY_LIMITS:
                raise LookupError(f"{field.full_name} is a repeated field without a limit in services/request_limits")
            steps.append(_Step(field, ENTRY_LIMITS[field.full_name], inner))
        elif inner:
            steps.append(_Step(field, None, inner))
    _plans[name] = plan = tuple(steps)
    return plan


def check_entry_limits(message: Message, *, prefix: str = "") -> None:
    """INVALID_ARGUMENT naming the first repeated or map field of `message` holding more than its limit."""
    plan = plan_for(message.DESCRIPTOR)  # type: ignore[arg-type]  # the upb Descriptor is the same type
    if plan:
        _check(message, plan, prefix)


def _check(message: Message, plan: tuple[_Step, ...], prefix: str) -> None:
    for step in plan:
        name = step.field.name
        if step.limit is None:
            if message.HasField(name):
                _check(getattr(message, name), step.inner, f"{prefix}{name}.")
            continue
        entries = getattr(message, name)
        if len(entries) > step.limit:
            raise InvalidArgumentError(
                f"{prefix}{name}", f"has {len(entries)} entries; at most {step.limit} are allowed"
            )
        if step.inner:
            for index, entry in enumerate(entries):
                _check(entry, step.inner, f"{prefix}{name}[{index}].")
