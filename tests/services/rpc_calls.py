"""Every control-plane RPC from the contracts, the role that may call it, and raw-body calls to any of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import grpc
from google.protobuf.descriptor import MethodDescriptor

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from services.admin.servicer import AdminServicer
from services.auth import Role
from services.budget.servicer import BudgetServicer
from services.config.servicer import ConfigServicer
from services.heartbeat.servicer import HeartbeatServicer
from services.reporting.servicer import ReportingServicer
from services.server import declared_roles
from services.telemetry.servicer import TelemetryServicer

_SERVICERS: Final[dict[str, type]] = {
    "meterwire.admin.v1.AdminService": AdminServicer,
    "meterwire.budget.v1.BudgetService": BudgetServicer,
    "meterwire.config.v1.ConfigService": ConfigServicer,
    "meterwire.heartbeat.v1.HeartbeatService": HeartbeatServicer,
    "meterwire.reporting.v1.ReportingService": ReportingServicer,
    "meterwire.telemetry.v1.TelemetryService": TelemetryServicer,
}

CONTROL_PLANE_METHODS: Final[list[MethodDescriptor]] = [
    method
    for module in (admin_pb, budget_pb, config_pb, heartbeat_pb, reporting_pb, telemetry_pb)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
"""Every RPC the control plane serves, from the contracts, so an RPC added later is covered without anyone
remembering to."""


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def caller_role(method: MethodDescriptor) -> Role:
    """Admin where the method allows it, else the role it declares (a gateway): the widest reach into it."""
    service = method.containing_service
    roles = declared_roles(service, _SERVICERS[service.full_name])[method_path(method)]
    return Role.ADMIN if Role.ADMIN in roles else min(roles)


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    responses: int


async def call_raw(
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    bodies: Sequence[bytes],
    *,
    secret: str,
    deadline_s: float = 10.0,
) -> Outcome:
    """Sends `bodies` as they are (one for a unary request, all of them on a stream) and returns the status."""
    path = method_path(method)
    # No serializers: the bodies go out as the bytes given, and responses come back as bytes.
    metadata = (("authorization", f"Bearer {secret}"),)
    responses = 0
    call: Any
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(path, None, None)(iter(bodies), metadata=metadata, timeout=deadline_s)
        elif method.client_streaming:
            call = channel.stream_unary(path, None, None)(iter(bodies), metadata=metadata, timeout=deadline_s)
        elif method.server_streaming:
            call = channel.unary_stream(path, None, None)(bodies[0], metadata=metadata, timeout=deadline_s)
        else:
            call = channel.unary_unary(path, None, None)(bodies[0], metadata=metadata, timeout=deadline_s)
        if method.server_streaming:
            async for _response in call:
                responses += 1
        else:
            await call
            responses = 1
    except grpc.aio.AioRpcError as error:
        return Outcome(error.code(), error.details() or "", responses)
    return Outcome(grpc.StatusCode.OK, "", responses)
