"""MCP tests: a real control plane with seeded usage in two environments, and real `meterwire mcp` processes
(stdio and streamable HTTP) driven by the MCP SDK's own client."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from services.server import ControlPlane
from tests.budget.conftest import control_plane
from tests.heartbeat.helpers import GatewayStream
from tests.services.conftest import Tokens, admin_secret, bearer, channel, tokens
from tests.telemetry.events import report, varied_events

__all__ = ["admin_secret", "channel", "control_plane", "tokens"]

MCP_COMMAND = str(Path(sys.executable).with_name("meterwire"))


@dataclass(frozen=True)
class Seed:
    """What the seeded control plane holds: where it is, who may read it, and one request of each environment."""

    address: str
    admin: str
    prod_reporter: str
    budget_id: str
    prod_request_id: str
    dev_request_id: str


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


def stdio_client(seed: Seed, token: str) -> Client:
    """A real `meterwire mcp` subprocess on stdio, acting with `token`."""
    environment = {**os.environ, "MW_TOKEN": token}
    environment.pop("MW_TOKEN_FILE", None)
    return Client(StdioServerParameters(command=MCP_COMMAND, args=["mcp", "--address", seed.address], env=environment))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class HttpServer:
    url: str

    @asynccontextmanager
    async def client(self, token: str) -> AsyncIterator[Client]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
            Client(streamable_http_client(self.url, http_client=http)) as client,
        ):
            yield client


@pytest.fixture
def http_server(seeded: Seed) -> Iterator[HttpServer]:
    """A real `meterwire mcp --http` subprocess with no token of its own; callers bring theirs."""
    port = _free_port()
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


async def wait_for_http(server: HttpServer) -> None:
    """Polls until the HTTP server answers (it is a fresh process); the test timeout bounds it."""
    async with httpx2.AsyncClient() as http:
        while True:
            try:
                await http.get(server.url)
                return
            except httpx2.TransportError:
                await asyncio.sleep(0.05)


def structured(result: Any) -> dict[str, Any]:
    """A successful tool result's structured content; a tool error fails the test with its message."""
    assert not result.is_error, result.content
    content: dict[str, Any] = result.structured_content
    return content


def error_text(result: Any) -> str:
    assert result.is_error, result.structured_content
    return " ".join(getattr(block, "text", "") for block in result.content)
