"""The currency usage figures are in: Reporting's summary names it (series and request rows carry none)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as pb_grpc
from services.cli.client import Connection, call


def range_currency(connection: Connection, channel: grpc.Channel, usage_filter: filter_pb2.UsageFilter) -> str:
    """The currency of the environments a filter covers ("" when they differ or have no pricing).

    Time series carry no currency of their own; the summary over the same filter says which it is.
    """
    request = pb.GetUsageSummaryRequest(filter=usage_filter)
    return call(connection, pb_grpc.ReportingServiceStub(channel).GetUsageSummary, request).summary.currency


class EnvironmentCurrencies:
    """Each environment's pricing currency, asked once (requests and events carry none of their own).

    Asked of Reporting, which every usage command already needs: a summary of one environment over its last
    second costs next to nothing and names the currency.
    """

    def __init__(self, connection: Connection, channel: grpc.Channel) -> None:
        self._connection = connection
        self._channel = channel
        self._known: dict[str, str] = {}

    def __call__(self, environment_id: str) -> str:
        if environment_id not in self._known:
            probe = filter_pb2.UsageFilter(environment_ids=[environment_id])
            now = datetime.now(UTC)
            probe.start_time.FromDatetime(now - timedelta(seconds=1))
            probe.end_time.FromDatetime(now)
            self._known[environment_id] = range_currency(self._connection, self._channel, probe)
        return self._known[environment_id]
