"""The answer a gateway gives a caller the agent denied: HTTP status, a JSON body in OpenAI's error envelope naming
the budget, and headers that keep client SDKs from retrying (they retry a bare 429 by default).

`http_response(decision)` is what a gateway needs; the builders below are what the agent fills Decisions with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from budgeting.decision import Metric
from budgeting.scope import SELECTORS
from budgeting.windows import Period

if TYPE_CHECKING:
    from gateway_agent.budget_rules import BudgetEntry

BUDGET_EXCEEDED: Final = "budget_exceeded"
_JSON: Final = "application/json"
_METRIC_UNITS: Final = {Metric.SPEND: "micro-units", Metric.TOKENS: "tokens", Metric.REQUESTS: "requests"}


@dataclass(frozen=True)
class DenialResponse:
    reason: str
    """For logs and people (Decision.reason)."""
    message: str
    """For the caller (Decision.message, and the body's error.message)."""
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)


class DeniedDecision(Protocol):
    """What http_response reads (gateway_agent.Decision)."""

    @property
    def allowed(self) -> bool: ...
    @property
    def http_status(self) -> int: ...
    @property
    def response_body(self) -> str: ...
    @property
    def response_headers(self) -> Mapping[str, str]: ...


def http_response(decision: DeniedDecision) -> tuple[int, str, dict[str, str]] | None:
    """(status, JSON body, headers) to answer a denied request with; None when the request is allowed."""
    if decision.allowed:
        return None
    return decision.http_status, decision.response_body, dict(decision.response_headers)


def _iso(moment_s: int | None) -> str | None:
    if moment_s is None:
        return None
    return datetime.fromtimestamp(moment_s, tz=UTC).isoformat().replace("+00:00", "Z")


def _envelope(kind: str, message: str, **extra: Any) -> str:
    return json.dumps({"error": {"type": kind, "code": kind, "message": message, **extra}}, separators=(",", ":"))


def budget_denial(
    entry: BudgetEntry, *, used: int, retry_after_s: int | None, lease_only: bool, message: str, currency: str
) -> DenialResponse:
    """The 429 (or the configured status) for a request a HARD_STOP budget refused."""
    rule = entry.rule
    scope = rule.scope
    scope_fields: dict[str, object] = {name: getattr(scope, name) for name in SELECTORS if getattr(scope, name)}
    if scope.tags:
        scope_fields["tags"] = dict(scope.tags)
    unit = currency + " micro-units" if rule.metric is Metric.SPEND and currency else _METRIC_UNITS[rule.metric]
    period = rule.period.name.lower()
    if lease_only:
        why = (
            f"this gateway's share of budget {rule.display_name!r} is used up until the control plane renews it"
            f" ({entry.pending + entry.reserved} of {entry.allowance} {unit})"
        )
    else:
        window = "in total" if rule.period is Period.TOTAL else f"this {period}"
        why = f"budget {rule.display_name!r} ({scope.describe()}) has used {used} of {rule.limit} {unit} {window}"
    text = f"{message}: {why}"
    budget = {
        "id": rule.budget_id,
        "name": rule.display_name,
        "scope": scope_fields,
        "metric": rule.metric.name.lower(),
        "limit": rule.limit,
        "used": used,
        "reserved": entry.reserved,
        "period": period,
        "time_zone": rule.time_zone or "UTC",
        "window_start": _iso(entry.window.start_s),
        "window_reset_time": _iso(entry.window.end_s),
        "currency": currency,
    }
    headers = {"content-type": _JSON, "x-should-retry": "false"}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    body = _envelope(BUDGET_EXCEEDED, text, budget=budget, retry_after_seconds=retry_after_s)
    return DenialResponse(reason=why, message=text, body=body, headers=headers)


def disabled_key_denial(api_key_id: str) -> DenialResponse:
    """The 403 for an API key the environment's config disables."""
    message = "API key disabled"
    body = _envelope("api_key_disabled", message, api_key_id=api_key_id)
    return DenialResponse(
        reason=message, message=message, body=body, headers={"content-type": _JSON, "x-should-retry": "false"}
    )


def state_unknown_denial(message: str) -> DenialResponse:
    """The answer while no budget state was ever received and the config says to deny then."""
    text = f"{message}: budget state is not known yet (the gateway has not reached the control plane)"
    body = _envelope(BUDGET_EXCEEDED, text, budget=None, retry_after_seconds=None)
    return DenialResponse(
        reason=text, message=text, body=body, headers={"content-type": _JSON, "x-should-retry": "false"}
    )
