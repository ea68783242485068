"""gRPC adapter for meterwire.reporting.v1.ReportingService: requests to report queries and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.auth import Role, current_principal, requires
from services.pricing import PriceBooks
from services.reporting.export import export_groups
from services.reporting.filters import groupings, select_usage
from services.reporting.history import RequestHistory
from services.reporting.reports import UsageReports
from services.settings import ServerSettings


class ReportingServicer(pb_grpc.ReportingServiceServicer):
    """Reports for admin and reporter tokens (a reporter sees only its environments)."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, prices: PriceBooks) -> None:
        self._engine = engine
        self._prices = prices
        self._reports = UsageReports(engine, max_points=settings.reporting_max_points, prices=prices)
        self._history = RequestHistory(engine)

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetUsageSummary(
        self, request: pb.GetUsageSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageSummaryResponse:
        selection = select_usage(request.filter, current_principal())
        return pb.GetUsageSummaryResponse(summary=await self._reports.summary(selection))

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetUsageBreakdown(
        self, request: pb.GetUsageBreakdownRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageBreakdownResponse:
        selection = select_usage(request.filter, current_principal())
        return await self._reports.breakdown(request, selection, groupings(request.group_by, field="group_by"))

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetUsageTimeSeries(
        self, request: pb.GetUsageTimeSeriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageTimeSeriesResponse:
        selection = select_usage(request.filter, current_principal())
        split = groupings([request.split_by], field="split_by") if request.HasField("split_by") else ()
        question = self._reports.series_request(request, selection, split[0] if split else None)
        return pb.GetUsageTimeSeriesResponse(series=await self._reports.time_series(question))

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRequestsResponse:
        selection = select_usage(request.filter, current_principal())
        return await self._history.list_requests(
            selection, errors_only=request.errors_only, size=request.page_size, token=request.page_token
        )

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetRequest(
        self, request: pb.GetRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRequestResponse:
        current_principal().require_environment(request.environment_id)
        return await self._history.get_request(request.environment_id, request.request_id)

    @requires(Role.ADMIN, Role.REPORTER)
    async def ExportUsage(
        self, request: pb.ExportUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExportUsageResponse]:
        selection = select_usage(request.filter, current_principal())
        if not request.group_by:
            async for events in self._history.export_events(selection):
                yield pb.ExportUsageResponse(events=events)
            return
        grouped = groupings(request.group_by, field="group_by")
        async for rows in export_groups(
            self._engine,
            selection,
            grouped,
            granularity=request.granularity,
            zone_name=request.time_zone,
            prices=self._prices,
        ):
            yield pb.ExportUsageResponse(rows=rows)
