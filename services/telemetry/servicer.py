"""gRPC adapter for meterwire.telemetry.v1.TelemetryService: translates calls to usage ingest and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from meterwire.telemetry.v1 import telemetry_service_pb2 as pb
from meterwire.telemetry.v1 import telemetry_service_pb2_grpc as pb_grpc
from services.auth import Role, current_principal, requires
from services.telemetry.ingest import UsageIngest


class TelemetryServicer(pb_grpc.TelemetryServiceServicer):
    """Usage batches in, acks out; the gateway is always the caller's token's. Starts and stops the writer."""

    def __init__(self, ingest: UsageIngest) -> None:
        self._ingest = ingest

    async def start(self) -> None:
        await self._ingest.start()

    async def shutdown(self) -> None:
        await self._ingest.shutdown()

    @requires(Role.GATEWAY)
    async def StreamUsage(
        self, request_iterator: AsyncIterator[pb.StreamUsageRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamUsageResponse]:
        gateway = await self._ingest.gateway(current_principal())
        async for ack in self._ingest.stream(gateway, request_iterator):
            yield pb.StreamUsageResponse(ack=ack)

    @requires(Role.GATEWAY)
    async def ReportUsage(
        self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ReportUsageResponse:
        gateway = await self._ingest.gateway(current_principal())
        queued = await self._ingest.submit(gateway, request)
        return pb.ReportUsageResponse(ack=await queued.ack())
