"""The meterwire gateway agent: durable usage spool, sender, cached config and local budget decisions."""

from gateway_agent.agent import AgentClosedError, AgentStatus, GatewayAgent, RecordResult, new_event_id
from gateway_agent.budget_view import BUDGETS_NOT_ENFORCED, CheckRequest, Decision
from gateway_agent.settings import AgentSettings, Durability, TlsSettings

__all__ = [
    "BUDGETS_NOT_ENFORCED",
    "AgentClosedError",
    "AgentSettings",
    "AgentStatus",
    "CheckRequest",
    "Decision",
    "Durability",
    "GatewayAgent",
    "RecordResult",
    "TlsSettings",
    "new_event_id",
]
