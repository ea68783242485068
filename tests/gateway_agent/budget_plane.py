"""A real control plane (in-process, on a fixed loopback port so it can be stopped and started again on the same
database) with budgets, gateway tokens and a short heartbeat interval, for the agents' budget tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration

from gateway_agent import AgentSettings, GatewayAgent
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.common.v1 import usage_pb2
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from services.server import ControlPlane
from services.settings import ServerSettings
from tests.clients import Tokens, bearer
from tests.gateway_agent.harness import ENVIRONMENT, agent_settings
from tests.system.serve import free_port

HEARTBEAT = timedelta(seconds=1)


@dataclass
class BudgetPlane:
    """The control plane's settings (fixed port) and, while it runs, the plane and an admin channel."""

    settings: ServerSettings
    plane: ControlPlane | None = None
    channel: grpc.aio.Channel | None = None
    gateway_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.settings.listen

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.settings.admin_token_path.read_text().strip())

    async def start(self) -> None:
        self.plane = ControlPlane(self.settings)
        await self.plane.start()
        self.channel = grpc.aio.insecure_channel(self.address)

    async def stop(self) -> None:
        """The control plane goes away (its agents are cut off)."""
        if self.channel is not None:
            await self.channel.close(None)
        if self.plane is not None:
            await self.plane.shutdown()
        self.plane = self.channel = None

    @property
    def budgets(self) -> budget_grpc.BudgetServiceAsyncStub:
        assert self.channel is not None
        return budget_grpc.BudgetServiceStub(self.channel)

    async def create_budget(
        self,
        name: str,
        *,
        limit: int,
        mode: int = budget_pb.MODE_HARD_STOP,
        metric: int = budget_pb.METRIC_SPEND,
        requested_model: str = "",
        period: int = budget_pb.PERIOD_DAY,
    ) -> str:
        budget = budget_pb.Budget(
            display_name=name,
            scope=budget_pb.Scope(environment_id=ENVIRONMENT, requested_model=requested_model),
            metric=metric,  # type: ignore[arg-type]
            limit=limit,
            period=period,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
        )
        response = await self.budgets.CreateBudget(budget_pb.CreateBudgetRequest(budget=budget), metadata=self.admin)
        return str(response.budget.budget_id)

    async def server_used(self, budget_id: str) -> int:
        response = await self.budgets.GetBudgetStatus(
            budget_pb.GetBudgetStatusRequest(budget_id=budget_id), metadata=self.admin
        )
        return int(response.status.used)

    async def put_config(self, *, heartbeat_interval: timedelta = HEARTBEAT, **enforcement: object) -> None:
        assert self.channel is not None
        config = config_pb.EnvironmentConfig(
            agent=config_pb.AgentSettings(heartbeat_interval=_duration(heartbeat_interval)),
            budget_enforcement=config_pb.BudgetEnforcement(**enforcement),  # type: ignore[arg-type]
        )
        await config_grpc.ConfigServiceStub(self.channel).PutConfig(
            config_pb.PutConfigRequest(environment_id=ENVIRONMENT, config=config), metadata=self.admin
        )


def _duration(delta: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(delta)
    return duration


@contextlib.asynccontextmanager
async def budget_plane(
    migrated_database_url: str, tmp_path: Path, *gateways: str, **server_settings: object
) -> AsyncIterator[BudgetPlane]:
    """A running control plane with the test environment, a token per gateway and a 1 s heartbeat interval
    (`server_settings` override ServerSettings fields)."""
    settings = ServerSettings(
        listen=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "var",
        database_url=migrated_database_url,
        drain_delay=timedelta(0),
        ingest_workers=0,
        shutdown_grace=timedelta(seconds=1),
        heartbeat_interval=HEARTBEAT,
    )
    plane = BudgetPlane(settings.model_copy(update=server_settings))
    await plane.start()
    try:
        assert plane.channel is not None
        tokens = Tokens(plane.channel, plane.admin[0][1].removeprefix("Bearer "))
        await tokens.environment(ENVIRONMENT)
        for gateway in gateways:
            plane.gateway_tokens[gateway] = await tokens.gateway(ENVIRONMENT, gateway)
        await plane.put_config()
        yield plane
    finally:
        await plane.stop()


def settings_for(plane: BudgetPlane, gateway: str, data_dir: Path, **overrides: object) -> AgentSettings:
    values: dict[str, object] = {"heartbeat_interval": HEARTBEAT, "backoff_max": timedelta(milliseconds=500)}
    return agent_settings(
        plane.address, plane.gateway_tokens[gateway], data_dir, gateway_id=gateway, **values | overrides
    )


def spend_event(model: str, cost_micros: int, *, reservation_id: str = "", event_id: str = "") -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=event_id,
        request_id=event_id or "r",
        attempt=1,
        requested_model=model,
        resolved_model=model,
        status_code=200,
        reservation_id=reservation_id,
    )
    event.cost_micros = cost_micros
    event.tokens.input = 10
    return event


def local_figures(agent: GatewayAgent, budget_id: str) -> tuple[int, int, int, int] | None:
    """(used, server_used, pending_used, reserved) as the agent sees the budget now; None before it knows it."""
    for figures in agent.status().budgets:
        if figures.budget_id == budget_id:
            return figures.used, figures.server_used, figures.pending_used, figures.reserved
    return None
