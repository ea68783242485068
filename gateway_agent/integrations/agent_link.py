"""How a gateway integration reaches its agent: one embedded in the gateway's own process and event loop, or a
`meterwire agent run` beside it on its local socket (for gateways with several worker processes)."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

import grpc
import structlog

from gateway_agent.agent import AgentClosedError, GatewayAgent
from gateway_agent.budget_view import CheckRequest, Decision
from gateway_agent.daemon import check_question, decision_from_response
from gateway_agent.settings import AgentSettings
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc
from meterwire.common.v1 import usage_pb2

log = structlog.get_logger("meterwire.agent_link")

LOCAL_CALL_TIMEOUT = timedelta(seconds=2)
"""A local agent that does not answer within this is treated as away (the request goes on: fail open)."""


class AgentLink(Protocol):
    """What an integration asks of an agent, wherever it runs."""

    async def start(self) -> None: ...
    async def check(self, request: CheckRequest) -> Decision: ...
    async def record(self, event: usage_pb2.UsageEvent) -> None: ...
    async def close(self) -> None: ...


class EmbeddedAgent:
    """A GatewayAgent in this process: check() is local state, record() a queue append."""

    def __init__(self, settings: AgentSettings) -> None:
        self.agent = GatewayAgent(settings)

    async def start(self) -> None:
        await self.agent.start()

    async def check(self, request: CheckRequest) -> Decision:
        return self.agent.check(request)

    async def record(self, event: usage_pb2.UsageEvent) -> None:
        try:
            await self.agent.record(event)
        except AgentClosedError:
            log.warning("usage after the agent stopped is not recorded", request_id=event.request_id)

    async def close(self) -> None:
        await self.agent.shutdown()


class LocalAgent:
    """A `meterwire agent run` reached on its --listen address (unix socket or loopback port). Its spool keeps
    what it answered; while it cannot be reached requests go on unchecked and their usage is lost (logged)."""

    def __init__(self, address: str, *, timeout: timedelta = LOCAL_CALL_TIMEOUT) -> None:
        self.address = address
        self._timeout = timeout.total_seconds()
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = agent_grpc.AgentServiceStub(self._channel)

    async def start(self) -> None:
        """Nothing to start: the channel connects on first use and reconnects by itself."""

    async def check(self, request: CheckRequest) -> Decision:
        question = check_question(request)
        try:
            answer: agent_pb.CheckRequestResponse = await self._stub.CheckRequest(question, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            log.error(
                "the local agent did not answer a check; serving the request", agent=self.address, error=str(error)
            )
            return Decision(allowed=True, reason=f"local agent unreachable: {error.code().name}")
        return decision_from_response(answer)

    async def record(self, event: usage_pb2.UsageEvent) -> None:
        try:
            response: agent_pb.RecordUsageResponse = await self._stub.RecordUsage(
                agent_pb.RecordUsageRequest(event=event), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            log.error(
                "USAGE LOST: the local agent did not take a usage event",
                agent=self.address,
                request_id=event.request_id,
                error=str(error),
            )
            return
        if response.outcome not in (agent_pb.RECORD_OUTCOME_QUEUED, agent_pb.RECORD_OUTCOME_COMMITTED):
            log.error("the local agent dropped a usage event", outcome=agent_pb.RecordOutcome.Name(response.outcome))

    async def close(self) -> None:
        await self._channel.close(None)
