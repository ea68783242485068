"""gRPC adapter for meterwire.heartbeat.v1.HeartbeatService: translates between protobuf and the fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.auth import Role, current_principal, requires
from services.errors import InvalidArgumentError
from services.heartbeat.fleet import Fleet
from services.heartbeat.messages import (
    agent_state_from_pb,
    change_to_pb,
    duration_pb,
    gateway_to_pb,
    status_to_pb,
    statuses_from_pb,
)
from services.timestamps import to_timestamp


class HeartbeatServicer(pb_grpc.HeartbeatServiceServicer):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    @requires(Role.GATEWAY)
    async def Heartbeat(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.HeartbeatResponse]:
        principal = current_principal()
        name = (principal.environment_id or "", principal.gateway_id or "")
        fleet = self.fleet
        fleet.stream_opened(name)
        try:
            async for request in request_iterator:
                state = agent_state_from_pb(request.state)
                # Looked up on every ping: an operator may have removed the gateway while it streams, and
                # then its next heartbeat registers it again.
                record = fleet.current(name) or fleet.register(*name)
                now = fleet.record_heartbeat(record, state)
                yield pb.HeartbeatResponse(
                    server_time=to_timestamp(now),
                    interval=duration_pb(record.interval),
                    status=status_to_pb(record.status),
                )
        finally:
            fleet.stream_closed(name)

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListGateways(
        self, request: pb.ListGatewaysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListGatewaysResponse:
        environments = current_principal().visible_environments(request.environment_ids, field="environment_ids")
        page = await self.fleet.list_gateways(
            environments,
            statuses_from_pb(request.statuses),
            requested_page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListGatewaysResponse(
            gateways=[gateway_to_pb(view) for view in page.items], next_page_token=page.next_page_token
        )

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetGateway(
        self, request: pb.GetGatewayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetGatewayResponse:
        current_principal().require_environment(request.environment_id)
        view = await self.fleet.gateway((request.environment_id, request.gateway_id))
        return pb.GetGatewayResponse(gateway=gateway_to_pb(view))

    @requires(Role.ADMIN, Role.REPORTER)
    async def WatchGateways(
        self, request: pb.WatchGatewaysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchGatewaysResponse]:
        environments = current_principal().visible_environments(request.environment_ids, field="environment_ids")
        async for change in self.fleet.watch(environments, send_initial=request.send_initial):
            yield change_to_pb(change)

    @requires(Role.ADMIN)
    async def DeleteGateway(
        self, request: pb.DeleteGatewayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteGatewayResponse:
        if not request.environment_id:
            raise InvalidArgumentError("environment_id", "is required")
        if not request.gateway_id:
            raise InvalidArgumentError("gateway_id", "is required")
        await self.fleet.delete((request.environment_id, request.gateway_id))
        return pb.DeleteGatewayResponse()
