"""Clients for heartbeat tests: a gateway that heartbeats over a real stream, and operator calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from typer.testing import CliRunner, Result

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.cli.main import app
from services.heartbeat.fleet import Fleet
from services.server import ControlPlane
from tests.clients import bearer


class GatewayStream:
    """One agent's Heartbeat stream: `await beat(state)` sends a ping and returns the server's answer."""

    def __init__(self, channel: grpc.aio.Channel, secret: str) -> None:
        self._outbox: asyncio.Queue[pb.HeartbeatRequest | None] = asyncio.Queue()
        self._call: Any = pb_grpc.HeartbeatServiceStub(channel).Heartbeat(self._requests(), metadata=bearer(secret))

    async def _requests(self) -> AsyncIterator[pb.HeartbeatRequest]:
        while (request := await self._outbox.get()) is not None:
            yield request

    async def beat(self, state: pb.AgentState | None = None) -> pb.HeartbeatResponse:
        await self._outbox.put(pb.HeartbeatRequest(state=state or pb.AgentState(agent_version="0.1.0")))
        response: pb.HeartbeatResponse = await self._call.read()
        return response

    async def close(self) -> None:
        await self._outbox.put(None)
        await self._call.read()  # EOF once the server has finished the stream


async def list_gateways(channel: grpc.aio.Channel, secret: str, **fields: Any) -> list[pb.Gateway]:
    stub = pb_grpc.HeartbeatServiceStub(channel)
    found: list[pb.Gateway] = []
    page_token = ""
    while True:
        request = pb.ListGatewaysRequest(page_token=page_token, **fields)
        response = await stub.ListGateways(request, metadata=bearer(secret))
        found.extend(response.gateways)
        page_token = response.next_page_token
        if not page_token:
            return found


class Cli:
    """Runs `meterwire` in a worker thread: the CLI's blocking gRPC calls need this loop free to serve them."""

    def __init__(self, control_plane: ControlPlane, secret: str) -> None:
        self.connection = ["--address", f"127.0.0.1:{control_plane.port}", "--token", secret]

    async def __call__(self, *args: str, stdin: str | None = None) -> Result:
        command = list(args)
        return await asyncio.to_thread(CliRunner().invoke, app, [*command, *self.connection], input=stdin)


def fleet_of(plane: ControlPlane) -> Fleet:
    return plane.deps.fleet
