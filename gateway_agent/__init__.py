"""The meterwire gateway agent: durable usage spool, sender, cached config and local budget decisions."""

from gateway_agent.agent import AgentClosedError, AgentStatus, GatewayAgent, RecordResult, new_event_id
from gateway_agent.budget_decision import BudgetFigures, CheckRequest, Decision, UsageEstimate
from gateway_agent.responses import http_response
from gateway_agent.settings import AgentSettings, Durability, TlsSettings

__all__ = [
    "AgentClosedError",
    "AgentSettings",
    "AgentStatus",
    "BudgetFigures",
    "CheckRequest",
    "Decision",
    "Durability",
    "GatewayAgent",
    "RecordResult",
    "TlsSettings",
    "UsageEstimate",
    "http_response",
    "new_event_id",
]
