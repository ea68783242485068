"""Clients of a test control plane: bearer metadata, and environments and tokens made through the AdminService."""

from __future__ import annotations

import grpc

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.admin.v1 import admin_service_pb2_grpc as admin_grpc


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


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
