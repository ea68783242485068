"""The agent as a daemon: a local AgentService (unix socket or loopback port) for gateways in any language."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import grpc
import structlog
from google.protobuf.duration_pb2 import Duration
from prometheus_client import start_http_server

from budgeting.decision import Verdict
from gateway_agent.agent import GatewayAgent, RecordResult
from gateway_agent.budget_decision import BudgetFigures, CheckRequest, Decision, UsageEstimate
from gateway_agent.interceptor import UndecodableBodies
from gateway_agent.metrics import agent_registry
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from meterwire.agent.v1 import agent_service_pb2_grpc as agent_grpc
from meterwire.budget.v1 import budget_service_pb2 as budget_pb

log = structlog.get_logger("meterwire.agent.daemon")

_OUTCOMES = {
    "spool_full": agent_pb.RECORD_OUTCOME_DROPPED_SPOOL_FULL,
    "queue_full": agent_pb.RECORD_OUTCOME_DROPPED_QUEUE_FULL,
    "disk_full": agent_pb.RECORD_OUTCOME_DROPPED_DISK_FULL,
}
_SOURCES = {
    "none": agent_pb.CONFIG_SOURCE_NONE,
    "cache": agent_pb.CONFIG_SOURCE_CACHE,
    "control_plane": agent_pb.CONFIG_SOURCE_CONTROL_PLANE,
}


def _outcome(result: RecordResult) -> agent_pb.RecordOutcome.ValueType:
    if not result.spooled:
        return _OUTCOMES.get(result.dropped_reason, agent_pb.RECORD_OUTCOME_DROPPED_DISK_FULL)
    return agent_pb.RECORD_OUTCOME_COMMITTED if result.committed else agent_pb.RECORD_OUTCOME_QUEUED


class AgentServicer(agent_grpc.AgentServiceServicer):
    """Translates the local API to GatewayAgent calls; no rules of its own."""

    def __init__(self, agent: GatewayAgent) -> None:
        self._agent = agent

    async def RecordUsage(
        self, request: agent_pb.RecordUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb.RecordUsageResponse:
        event = request.event
        result = await self._agent.record(event, wait_for_commit=request.wait_for_commit)
        return agent_pb.RecordUsageResponse(
            event_id=result.event_id, sequence=result.sequence, outcome=_outcome(result)
        )

    async def RecordUsageStream(
        self,
        request_iterator: AsyncIterator[agent_pb.RecordUsageStreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> agent_pb.RecordUsageStreamResponse:
        response = agent_pb.RecordUsageStreamResponse()
        wait = False
        async for request in request_iterator:
            wait = wait or request.wait_for_commit
            result = await self._agent.record(request.event)
            if result.spooled:
                response.recorded_count += 1
                response.last_sequence = result.sequence
                if not response.first_sequence:
                    response.first_sequence = result.sequence
            else:
                response.dropped_count += 1
        if wait:
            await self._agent.flush()
        return response

    async def CheckRequest(
        self, request: agent_pb.CheckRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb.CheckRequestResponse:
        return check_response(self._agent.check(check_request(request)))

    async def ReleaseReservation(
        self, request: agent_pb.ReleaseReservationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb.ReleaseReservationResponse:
        return agent_pb.ReleaseReservationResponse(released=self._agent.release_reservation(request.reservation_id))

    async def GetConfig(
        self, request: agent_pb.GetConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb.GetConfigResponse:
        status = self._agent.status()
        response = agent_pb.GetConfigResponse(
            source=_SOURCES[status.config_source], state_message=status.config_state_message
        )
        record = self._agent.config_record
        if record is not None:
            response.config_version.CopyFrom(record)
        applied = self._agent.config_applied_time
        if applied is not None:
            response.applied_time.FromDatetime(applied)
        return response

    async def GetStatus(
        self, request: agent_pb.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> agent_pb.GetStatusResponse:
        status = self._agent.status()
        uptime = Duration()
        uptime.FromTimedelta(status.uptime)
        response = agent_pb.GetStatusResponse(
            status=agent_pb.AgentStatus(
                state=self._agent.agent_state(),
                environment_id=status.environment_id,
                gateway_id=status.gateway_id,
                connected=status.connected,
                last_error=status.last_error,
                config_source=_SOURCES[status.config_source],
                config_state_message=status.config_state_message,
                pending_commit_count=status.pending_commit,
                next_sequence=status.next_sequence,
                dropped_by_reason=status.dropped_by_reason,
                corrupt_spools_set_aside=status.corrupt_spools_set_aside,
                batches_acked=status.batches_acked,
                events_accepted=status.events_accepted,
                events_duplicate=status.events_duplicate,
                events_rejected=status.events_rejected,
                stream_failures=status.stream_failures,
                unacked_batches=status.unacked_batches,
                uptime=uptime,
                budgets=[local_budget(figures) for figures in status.budgets],
                open_reservations=status.open_reservations,
            )
        )
        if status.budget_snapshot_time is not None:
            response.status.budget_snapshot_time.FromDatetime(status.budget_snapshot_time)
        return response


def local_budget(figures: BudgetFigures) -> agent_pb.LocalBudget:
    """A budget as the agent sees it, as agent_service.proto carries it."""
    local = agent_pb.LocalBudget(
        budget=figures.budget,
        used=figures.used,
        server_used=figures.server_used,
        pending_used=figures.pending_used,
        reserved=figures.reserved,
        remaining=figures.remaining,
        state=budget_pb.BudgetState.ValueType(int(figures.state)),
        lease_allowance=figures.lease_allowance or 0,
        lease_sharing_gateways=figures.lease_sharing_gateways,
        denied_requests=figures.denied_requests,
        shadow_denied_requests=figures.shadow_denied_requests,
    )
    local.window_start_time.FromSeconds(figures.window_start_s)
    if figures.window_end_s is not None:
        local.window_end_time.FromSeconds(figures.window_end_s)
    return local


_REQUEST_FIELDS: Final = ("api_key_id", "user_id", "requested_model", "route")
"""The fields a CheckRequest and a CheckRequestRequest carry alike (check_question and check_request)."""
_ESTIMATE_FIELDS: Final = ("input_tokens", "max_output_tokens", "model")
"""Likewise for UsageEstimate and CheckRequestRequest.estimate, but for the optional cost_micros."""


def check_question(request: CheckRequest) -> agent_pb.CheckRequestRequest:
    """A gateway's CheckRequest as the daemon's CheckRequestRequest (check_request's inverse)."""
    question = agent_pb.CheckRequestRequest(
        tags=dict(request.tags), **{name: getattr(request, name) for name in _REQUEST_FIELDS}
    )
    estimate = request.estimate
    if estimate is not None:
        question.estimate.SetInParent()  # an estimate of all zeros is still an estimate
        for name in _ESTIMATE_FIELDS:
            setattr(question.estimate, name, getattr(estimate, name))
        if estimate.cost_micros is not None:
            question.estimate.cost_micros = estimate.cost_micros
    return question


def check_request(question: agent_pb.CheckRequestRequest) -> CheckRequest:
    """The CheckRequest a CheckRequestRequest asks about."""
    estimate = None
    if question.HasField("estimate"):
        given = question.estimate
        estimate = UsageEstimate(
            cost_micros=given.cost_micros if given.HasField("cost_micros") else None,
            **{name: getattr(given, name) for name in _ESTIMATE_FIELDS},
        )
    return CheckRequest(
        tags=dict(question.tags), estimate=estimate, **{name: getattr(question, name) for name in _REQUEST_FIELDS}
    )


_DECISION_FIELDS: Final = (
    "allowed",
    "reason",
    "http_status",
    "message",
    "config_version",
    "denied_by_budget_id",
    "reservation_id",
    "response_body",
)
"""The fields a Decision and a CheckRequestResponse carry alike, under the same names (check_response and
decision_from_response copy them both ways)."""


def check_response(decision: Decision) -> agent_pb.CheckRequestResponse:
    """A decision as CheckRequestResponse, with the ready-to-send denial."""
    response = agent_pb.CheckRequestResponse(
        decision=budget_pb.Decision.ValueType(int(decision.verdict)),
        budgets=[local_budget(figures) for figures in decision.budgets],
        response_headers=dict(decision.response_headers),
        **{name: getattr(decision, name) for name in _DECISION_FIELDS},
    )
    if decision.retry_after_s is not None:
        response.retry_after.FromSeconds(decision.retry_after_s)
    if decision.reservation_expire_s is not None:
        response.reservation_expire_time.FromNanoseconds(int(decision.reservation_expire_s * 1e9))
    return response


def decision_from_response(response: agent_pb.CheckRequestResponse) -> Decision:
    """The Decision a daemon's CheckRequestResponse carries (check_response's inverse, less the budgets' figures,
    which a gateway reads with GetStatus)."""
    return Decision(
        # Same numbers; an older daemon answers 0 (unspecified): ALLOW or DENY as it decided.
        verdict=Verdict(response.decision)
        if response.decision
        else (Verdict.ALLOW if response.allowed else Verdict.DENY),
        retry_after_s=response.retry_after.seconds if response.HasField("retry_after") else None,
        reservation_expire_s=response.reservation_expire_time.ToNanoseconds() / 1e9
        if response.HasField("reservation_expire_time")
        else None,
        response_headers=dict(response.response_headers),
        **{name: getattr(response, name) for name in _DECISION_FIELDS},
    )


def check_listen(listen: str) -> str:
    """unix:///path.sock or a loopback host:port; the local API has no authentication, so nothing wider."""
    if listen.startswith("unix:"):
        return listen
    host = listen.rpartition(":")[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--listen: {listen!r} is not local; use unix:///path.sock or 127.0.0.1:PORT")
    return listen


class MetricsListenError(RuntimeError):
    """The metrics address could not be bound (in use, or not permitted)."""


class AgentDaemon:
    """Hosts AgentService over a running GatewayAgent. `run()` serves until `shutdown()` (safe twice)."""

    def __init__(self, agent: GatewayAgent, *, listen: str, metrics_listen: tuple[str, int] | None = None) -> None:
        self.agent = agent
        self.listen = check_listen(listen)
        self.port = 0
        self.metrics_listen = metrics_listen
        self.metrics_port = 0
        self._metrics: Any = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        if self.listen.startswith("unix://"):
            # A stale socket from a crashed run would make the bind fail.
            await asyncio.to_thread(Path(self.listen.removeprefix("unix://")).unlink, missing_ok=True)
        await self.agent.start()
        self._server = grpc.aio.server(interceptors=[UndecodableBodies()])
        agent_grpc.add_AgentServiceServicer_to_server(AgentServicer(self.agent), self._server)
        self.port = self._server.add_insecure_port(self.listen)
        await self._server.start()
        if self.metrics_listen is not None:
            host, port = self.metrics_listen
            registry = agent_registry(self.agent, asyncio.get_running_loop())
            try:
                self._metrics, _thread = start_http_server(port, addr=host, registry=registry)
            except OSError as error:
                raise MetricsListenError(f"cannot serve metrics on {host}:{port}: {error.strerror or error}") from None
            self.metrics_port = int(self._metrics.server_port)
        log.info("agent daemon serving", listen=self.listen, port=self.port, metrics_port=self.metrics_port or None)

    async def run(self) -> None:
        if self._server is None:
            await self.start()
        await self._stopped.wait()

    def request_shutdown(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop())

    async def shutdown(self) -> None:
        self.request_shutdown()
        assert self._stopping is not None
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics.server_close()
            self._metrics = None
        if self._server is not None:
            await self._server.stop(2.0)  # finish in-flight RecordUsage calls first
        await self.agent.shutdown()
        self._stopped.set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()
