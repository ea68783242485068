"""A real control plane on a loopback port, on each test database, and clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.admin.v1 import admin_service_pb2_grpc as admin_grpc
from services.server import ControlPlane
from services.settings import ServerSettings


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


@pytest.fixture
async def control_plane(database_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    settings = ServerSettings(
        listen="127.0.0.1:0",
        data_dir=tmp_path / "var",
        database_url=database_url,
        drain_delay=timedelta(0),
        ingest_workers=0,  # tests/telemetry prepares batches both ways
        shutdown_grace=timedelta(seconds=1),
    )
    async with ControlPlane(settings) as plane:
        yield plane


@pytest.fixture
async def channel(control_plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_plane.port}") as client_channel:
        yield client_channel


@pytest.fixture
def admin_secret(control_plane: ControlPlane) -> str:
    return control_plane.settings.admin_token_path.read_text().strip()


class Tokens:
    """Creates environments and tokens through the real AdminService."""

    def __init__(self, channel: grpc.aio.Channel, admin_secret: str) -> None:
        self.stub = admin_grpc.AdminServiceStub(channel)
        self.admin = admin_secret

    async def environment(self, environment_id: str) -> None:
        request = admin_pb.CreateEnvironmentRequest(environment=admin_pb.Environment(environment_id=environment_id))
        await self.stub.CreateEnvironment(request, metadata=bearer(self.admin))

    async def create(
        self,
        role: admin_pb.Role.ValueType,
        *,
        environment_id: str = "",
        gateway_id: str = "",
        environment_ids: tuple[str, ...] = (),
    ) -> admin_pb.CreateTokenResponse:
        request = admin_pb.CreateTokenRequest(
            role=role, environment_id=environment_id, gateway_id=gateway_id, environment_ids=environment_ids
        )
        response: admin_pb.CreateTokenResponse = await self.stub.CreateToken(request, metadata=bearer(self.admin))
        return response

    async def gateway(self, environment_id: str, gateway_id: str) -> str:
        return (await self.create(admin_pb.ROLE_GATEWAY, environment_id=environment_id, gateway_id=gateway_id)).secret

    async def reporter(self, *environment_ids: str) -> str:
        return (await self.create(admin_pb.ROLE_REPORTER, environment_ids=environment_ids)).secret


@pytest.fixture
async def tokens(channel: grpc.aio.Channel, admin_secret: str) -> Tokens:
    return Tokens(channel, admin_secret)
