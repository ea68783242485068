"""gRPC adapter for meterwire.admin.v1.AdminService."""

from __future__ import annotations

from typing import Any

import grpc

from meterwire.admin.v1 import admin_service_pb2 as pb
from meterwire.admin.v1 import admin_service_pb2_grpc as pb_grpc
from services.admin.service import AdminService
from services.admin.store import EnvironmentRecord, TokenRecord
from services.auth import Role, current_principal, requires
from services.errors import InvalidArgumentError
from services.timestamps import to_timestamp

_ROLE_TO_PB = {Role.ADMIN: pb.ROLE_ADMIN, Role.REPORTER: pb.ROLE_REPORTER, Role.GATEWAY: pb.ROLE_GATEWAY}
_ROLE_FROM_PB = {value: key for key, value in _ROLE_TO_PB.items()}


def environment_pb(record: EnvironmentRecord) -> pb.Environment:
    return pb.Environment(
        environment_id=record.environment_id,
        display_name=record.display_name,
        description=record.description,
        create_time=to_timestamp(record.create_time),
    )


def token_pb(record: TokenRecord) -> pb.Token:
    token = pb.Token(
        token_id=record.token_id,
        role=_ROLE_TO_PB[record.role],
        environment_id=record.environment_id or "",
        gateway_id=record.gateway_id or "",
        environment_ids=record.environment_ids,
        description=record.description,
        create_time=to_timestamp(record.create_time),
        created_by=record.created_by or "",
    )
    if record.revoke_time is not None:
        token.revoke_time.CopyFrom(to_timestamp(record.revoke_time))
    return token


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, admin: AdminService) -> None:
        self._admin = admin

    @requires(Role.ADMIN)
    async def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateEnvironmentResponse:
        env = request.environment
        record, created = await self._admin.create_environment(
            environment_id=env.environment_id, display_name=env.display_name, description=env.description
        )
        return pb.CreateEnvironmentResponse(environment=environment_pb(record), created=created)

    @requires(Role.ADMIN)
    async def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListEnvironmentsResponse:
        page = await self._admin.list_environments(
            current_principal(), requested_page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListEnvironmentsResponse(
            environments=[environment_pb(e) for e in page.items], next_page_token=page.next_page_token
        )

    @requires(Role.ADMIN)
    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateTokenResponse:
        role = _ROLE_FROM_PB.get(request.role)
        if role is None:
            raise InvalidArgumentError("role", "choose ROLE_ADMIN, ROLE_REPORTER or ROLE_GATEWAY")
        record, secret = await self._admin.create_token(
            current_principal(),
            role=role,
            environment_id=request.environment_id,
            gateway_id=request.gateway_id,
            environment_ids=list(request.environment_ids),
            description=request.description,
        )
        return pb.CreateTokenResponse(token=token_pb(record), secret=secret)

    @requires(Role.ADMIN)
    async def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListTokensResponse:
        page = await self._admin.list_tokens(
            show_revoked=request.show_revoked,
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListTokensResponse(tokens=[token_pb(t) for t in page.items], next_page_token=page.next_page_token)

    @requires(Role.ADMIN)
    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RevokeTokenResponse:
        return pb.RevokeTokenResponse(token=token_pb(await self._admin.revoke_token(request.token_id)))
