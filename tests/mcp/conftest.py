"""MCP tests: a real control plane (the budget tests' settings) with seeded usage in two environments, and a real
`meterwire mcp --http` process for the HTTP tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from services.server import ControlPlane
from tests.budget.settings import budget_settings
from tests.clients import Tokens, bearer
from tests.heartbeat.helpers import GatewayStream
from tests.mcp.harness import MCP_COMMAND, HttpServer, Seed, free_port
from tests.telemetry.events import report, varied_events


@pytest.fixture
async def control_plane(migrated_database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(budget_settings(migrated_database_url, tmp_path / "var")) as plane:
        yield plane


@pytest.fixture
async def seeded(control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str) -> Seed:
    for environment_id in ("prod", "dev"):
        await tokens.environment(environment_id)
    budget = budget_pb.Budget(
        display_name="prod spend",
        scope=budget_pb.Scope(environment_id="prod"),
        metric=budget_pb.METRIC_SPEND,
        limit=1_000_000,
        period=budget_pb.PERIOD_MONTH,
        time_zone="UTC",
        mode=budget_pb.MODE_WARN_ONLY,
        alert_threshold_percents=[50, 100],
    )
    created = await budget_grpc.BudgetServiceStub(channel).CreateBudget(
        budget_pb.CreateBudgetRequest(budget=budget), metadata=bearer(admin_secret)
    )
    prod_events = varied_events(60, seed=11)
    dev_events = varied_events(20, seed=12)
    for i, event in enumerate(prod_events):
        # Two tags on overlapping subsets, so an AND of both differs from either alone.
        event.tags["team"] = "search" if i % 2 == 0 else "ads"
        if i % 3 == 1:  # the events varied_events gives a cost
            event.tags["project"] = "alpha"
    for event in dev_events:
        event.request_id = f"dev-{event.request_id}"
    prod_gateway = await tokens.gateway("prod", "gw-prod")
    await report(channel, prod_gateway, prod_events)
    await report(channel, await tokens.gateway("dev", "gw-dev"), dev_events)
    # One gateway heartbeats with dead letters, so the fleet has a degraded gateway with a reason.
    stream = GatewayStream(channel, prod_gateway)
    await stream.beat(heartbeat_pb.AgentState(agent_version="0.1.0", dead_letter_count=3))
    await stream.close()
    return Seed(
        address=f"127.0.0.1:{control_plane.port}",
        admin=admin_secret,
        prod_reporter=await tokens.reporter("prod"),
        budget_id=created.budget.budget_id,
        prod_request_id=prod_events[0].request_id,
        dev_request_id=dev_events[0].request_id,
    )


@pytest.fixture
def http_server(seeded: Seed) -> Iterator[HttpServer]:
    """A real `meterwire mcp --http` subprocess with no token of its own; callers bring theirs."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key not in ("MW_TOKEN", "MW_TOKEN_FILE")}
    process = subprocess.Popen(
        [MCP_COMMAND, "mcp", "--http", f"127.0.0.1:{port}", "--address", seeded.address],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield HttpServer(f"http://127.0.0.1:{port}/mcp")
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()
