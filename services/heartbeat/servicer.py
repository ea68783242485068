"""gRPC adapter for meterwire.heartbeat.v1.HeartbeatService: translates between protobuf and the fleet."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from meterwire.heartbeat.v1 import heartbeat_service_pb2 as pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as pb_grpc
from services.auth import Role, current_principal, requires
from services.errors import InvalidArgumentError
from services.heartbeat.fleet import Fleet
from services.heartbeat.records import GatewayRecord, check_agent_state
from services.pagination import decode_page_token, encode_page_token, page_size
from services.timestamps import to_timestamp


@functools.lru_cache(maxsize=64)
def _duration(interval: timedelta) -> Duration:
    """The interval as a Duration, made once per distinct interval (a handful per server); assigning it to a
    response copies it, so the cached message is never changed."""
    duration = Duration()
    duration.FromTimedelta(interval)
    return duration


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
        self.fleet.stream_opened(name)
        try:
            async for request in request_iterator:
                check_agent_state(request.state)
                # Looked up on every ping: an operator may have removed the gateway while it streams, and
                # then its next heartbeat registers it again.
                record = fleet.current(name) or fleet.register(*name)
                now = fleet.record_heartbeat(record, request.state)
                yield pb.HeartbeatResponse(
                    server_time=to_timestamp(now), interval=_duration(record.interval), status=record.status
                )
        finally:
            self.fleet.stream_closed(name)

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListGateways(
        self, request: pb.ListGatewaysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListGatewaysResponse:
        environments = current_principal().visible_environments(request.environment_ids, field="environment_ids")
        for index, status in enumerate(request.statuses):
            if status not in pb.GatewayStatus.values() or status == pb.GATEWAY_STATUS_UNSPECIFIED:
                raise InvalidArgumentError(f"statuses[{index}]", f"{status} is not a gateway status")
        limit = page_size(request.page_size)
        position = decode_page_token(request.page_token)
        after = tuple(position.get("after", ())) if position else ()
        if position is not None and len(after) != 2:
            raise InvalidArgumentError("page_token", "is not a token this server issued; pass the last next_page_token")
        wanted = frozenset(request.statuses)
        page: list[GatewayRecord] = []
        more = False
        for record in await self.fleet.gateways(environments):
            if after and record.name <= after:
                continue
            if wanted and record.status not in wanted:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(record)
        return pb.ListGatewaysResponse(
            gateways=[self.fleet.to_gateway(record) for record in page],
            next_page_token=encode_page_token({"after": list(page[-1].name)}) if more else "",
        )

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetGateway(
        self, request: pb.GetGatewayRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetGatewayResponse:
        current_principal().require_environment(request.environment_id)
        record = await self.fleet.gateway((request.environment_id, request.gateway_id))
        return pb.GetGatewayResponse(gateway=self.fleet.to_gateway(record))

    @requires(Role.ADMIN, Role.REPORTER)
    async def WatchGateways(
        self, request: pb.WatchGatewaysRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchGatewaysResponse]:
        environments = current_principal().visible_environments(request.environment_ids, field="environment_ids")
        async for change in self.fleet.watch(environments, send_initial=request.send_initial):
            yield change

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
