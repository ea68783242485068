"""Reads what meterwire reports about the proxy's requests, through the Reporting RPCs of a real control plane."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as reporting_grpc
from tests.clients import bearer

DELIVERY_TIMEOUT_S = 60.0


class Reports:
    """Reporting over a sync channel with an admin token (the tests are plain functions driving processes)."""

    def __init__(self, address: str, token: str, environment: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = reporting_grpc.ReportingServiceStub(self._channel)
        self._metadata = bearer(token)
        self.environment = environment

    def close(self) -> None:
        self._channel.close()

    def request(self, request_id: str) -> reporting_pb.GetRequestResponse | None:
        try:
            response: reporting_pb.GetRequestResponse = self._stub.GetRequest(
                reporting_pb.GetRequestRequest(environment_id=self.environment, request_id=request_id),
                metadata=self._metadata,
                timeout=10,
            )
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                return None
            raise
        return response

    def wait_for_request(self, request_id: str, *, attempts: int = 1) -> reporting_pb.GetRequestResponse:
        """The request once the control plane has all `attempts` of it."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            found = self.request(request_id)
            if found is not None and len(found.attempts) >= attempts:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} never reached the control plane with {attempts} attempts")
            time.sleep(0.1)

    def event_ids(self) -> Counter[str]:
        """Every stored event id of the environment (raw export of the last day), with how often it is stored."""
        now = datetime.now(UTC)
        usage_filter = filter_pb2.UsageFilter(environment_ids=[self.environment])
        usage_filter.start_time.FromDatetime(now - timedelta(days=1))
        usage_filter.end_time.FromDatetime(now + timedelta(hours=1))
        stored: Counter[str] = Counter()
        for page in self._stub.ExportUsage(
            reporting_pb.ExportUsageRequest(filter=usage_filter), metadata=self._metadata, timeout=30
        ):
            stored.update(event.event.event_id for event in page.events)
        return stored
