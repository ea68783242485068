"""gRPC adapter for meterwire.reporting.v1.ReportingService: requests to report queries and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.auth import Role, current_principal, requires
from services.errors import DeadlineExceededError, InvalidArgumentError
from services.pagination import decode_page_token, encode_page_token, page_size
from services.pricing import PriceBooks
from services.reporting.export import export_groups
from services.reporting.figures import metric_message
from services.reporting.filters import groupings, select_usage
from services.reporting.history import RequestHistory
from services.reporting.messages import request_message, stored_event_message
from services.reporting.reports import OTHER_KEY, BreakdownQuery, Series, SeriesRequest, UsageReports
from services.settings import ServerSettings


class ReportingServicer(pb_grpc.ReportingServiceServicer):
    """Reports for admin and reporter tokens (a reporter sees only its environments)."""

    def __init__(self, engine: AsyncEngine, settings: ServerSettings, prices: PriceBooks) -> None:
        self._engine = engine
        self._prices = prices
        self._reports = UsageReports(engine, max_points=settings.reporting_max_points, prices=prices)
        self._max_export_buckets = settings.reporting_max_export_buckets
        self._history = RequestHistory(engine)

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetUsageSummary(
        self, request: pb.GetUsageSummaryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageSummaryResponse:
        selection = select_usage(request.filter, current_principal())
        figures = await self._reports.summary(selection)
        return pb.GetUsageSummaryResponse(summary=figures.summary())

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetUsageBreakdown(
        self, request: pb.GetUsageBreakdownRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageBreakdownResponse:
        fingerprint = _fingerprint(request)
        query = BreakdownQuery(
            select_usage(request.filter, current_principal()),
            groupings(request.group_by, field="group_by"),
            order_by=request.order_by or pb.METRIC_COST,
            ascending=request.ascending,
            top_n=request.top_n,
            offset=_page_offset(request.page_token, fingerprint),
            size=page_size(request.page_size),
        )
        page = await self._reports.breakdown(query)
        response = pb.GetUsageBreakdownResponse(
            rows=[pb.BreakdownRow(keys=key, summary=figures.summary()) for key, figures in page.rows]
        )
        if page.next_offset is not None:
            response.next_page_token = encode_page_token({"q": fingerprint, "o": page.next_offset})
        if page.other is not None:
            keys = [OTHER_KEY] * len(query.groupings)
            response.other.CopyFrom(pb.BreakdownRow(keys=keys, summary=page.other.summary()))
        return response

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetUsageTimeSeries(
        self, request: pb.GetUsageTimeSeriesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetUsageTimeSeriesResponse:
        split = groupings([request.split_by], field="split_by") if request.HasField("split_by") else ()
        question = SeriesRequest(
            select_usage(request.filter, current_principal()),
            granularity=request.granularity,
            zone_name=request.time_zone,
            metrics=tuple(request.metrics),
            split_by=split[0] if split else None,
            top_n=request.top_n,
        )
        series = await self._reports.time_series(question)
        return pb.GetUsageTimeSeriesResponse(series=[_series_message(one) for one in series])

    @requires(Role.ADMIN, Role.REPORTER)
    async def ListRequests(
        self, request: pb.ListRequestsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListRequestsResponse:
        selection = select_usage(request.filter, current_principal())
        page = await self._history.list_requests(
            selection, errors_only=request.errors_only, size=request.page_size, token=request.page_token
        )
        return pb.ListRequestsResponse(
            requests=[request_message(outcome) for outcome in page.requests], next_page_token=page.next_page_token
        )

    @requires(Role.ADMIN, Role.REPORTER)
    async def GetRequest(
        self, request: pb.GetRequestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetRequestResponse:
        current_principal().require_environment(request.environment_id)
        outcome, attempts = await self._history.get_request(request.environment_id, request.request_id)
        return pb.GetRequestResponse(
            request=request_message(outcome), attempts=[stored_event_message(stored) for stored in attempts]
        )

    @requires(Role.ADMIN, Role.REPORTER)
    async def ExportUsage(
        self, request: pb.ExportUsageRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExportUsageResponse]:
        selection = select_usage(request.filter, current_principal())
        if not request.group_by:
            async for events in self._history.export_events(selection):
                _check_deadline(context)
                yield pb.ExportUsageResponse(events=[stored_event_message(stored) for stored in events])
            return
        grouped = groupings(request.group_by, field="group_by")
        async for rows in export_groups(
            self._engine,
            selection,
            grouped,
            granularity=request.granularity,
            zone_name=request.time_zone,
            prices=self._prices,
            max_buckets=self._max_export_buckets,
        ):
            _check_deadline(context)
            yield pb.ExportUsageResponse(rows=rows)


def _check_deadline(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Ends an export whose caller's deadline has passed (nobody reads what it would compute next)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError("the export outlived its caller's deadline; ask a shorter range or wait longer")


def _fingerprint(request: pb.GetUsageBreakdownRequest) -> str:
    """Ties a page token to the query it continues, so a token cannot be replayed against another."""
    query = pb.GetUsageBreakdownRequest()
    query.CopyFrom(request)
    query.ClearField("page_token")
    query.ClearField("page_size")
    return hashlib.sha256(query.SerializeToString(deterministic=True)).hexdigest()[:16]


def _page_offset(token: str, fingerprint: str) -> int:
    """Where a breakdown page token continues (0 without one); INVALID_ARGUMENT for another query's token."""
    position = decode_page_token(token)
    if position is None:
        return 0
    if position.get("q") != fingerprint or not isinstance(position.get("o"), int):
        raise InvalidArgumentError("page_token", "belongs to a different query; start again without it")
    offset: int = position["o"]
    return offset


def _series_message(series: Series) -> pb.TimeSeries:
    message = pb.TimeSeries(metric=series.metric, key=series.key)  # type: ignore[arg-type]
    for label_us, value in zip(series.labels_us, series.values, strict=True):
        point = message.points.add(value=metric_message(value, series.metric))
        point.bucket_start_time.FromMicroseconds(label_us)
    if series.values:
        message.min.CopyFrom(metric_message(min(series.values), series.metric))
        message.max.CopyFrom(metric_message(max(series.values), series.metric))
        message.average = sum(series.values) / len(series.values)
    return message
