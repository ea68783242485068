"""Bodies that do not decode are INVALID_ARGUMENT on every RPC, and a huge value comes back and is logged short."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from services.auth import Role
from services.errors import MAX_STATUS_DETAILS_BYTES
from tests.clients import Tokens
from tests.services.log_capture import rendered_logs
from tests.services.rpc_calls import CONTROL_PLANE_METHODS, Outcome, call_raw, caller_role
from tests.telemetry.events import usage_event

CORRUPT_WIRE = b"\xff\xff\xff"
"""A field tag whose varint never ends."""
BAD_UTF8 = b"\xff\xfe"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def bad_utf8_body(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> bytes | None:
    """A body whose first reachable string field (nested if need be) holds invalid UTF-8."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return _length_delimited(field.number, BAD_UTF8)
    for field in descriptor.fields:
        inner_type = field.message_type
        if inner_type is not None and inner_type.full_name not in seen:
            inner = bad_utf8_body(inner_type, seen | {descriptor.full_name})
            if inner is not None:
                return _length_delimited(field.number, inner)
    return None


@pytest.fixture
async def secrets_by_role(tokens: Tokens, admin_secret: str) -> dict[Role, str]:
    await tokens.environment("env-a")
    return {Role.ADMIN: admin_secret, Role.GATEWAY: await tokens.gateway("env-a", "gw-1")}


async def _call_with(
    channel: grpc.aio.Channel, method: MethodDescriptor, bodies: list[bytes], secrets: dict[Role, str]
) -> Outcome:
    return await call_raw(channel, method, bodies, secret=secrets[caller_role(method)])


async def test_every_rpc_refuses_an_undecodable_body_with_invalid_argument(
    channel: grpc.aio.Channel, secrets_by_role: dict[Role, str]
) -> None:
    answers: dict[str, Outcome] = {}
    with rendered_logs() as logged:
        for method in CONTROL_PLANE_METHODS:
            bad_utf8 = bad_utf8_body(method.input_type)
            assert bad_utf8 is not None, f"{method.input_type.full_name} has no string field to spoil"
            for kind, body in (("corrupt", CORRUPT_WIRE), ("bad-utf8", bad_utf8)):
                answers[f"{method.full_name} {kind}"] = await _call_with(channel, method, [body], secrets_by_role)
    assert len(answers) > 50
    wrong = {
        name: answer
        for name, answer in answers.items()
        if answer.code is not grpc.StatusCode.INVALID_ARGUMENT or "is not a valid serialized" not in answer.details
    }
    assert wrong == {}
    assert answers["meterwire.admin.v1.AdminService.RevokeToken bad-utf8"].details == (
        "request: is not a valid serialized meterwire.admin.v1.RevokeTokenRequest (String field had bad UTF-8)"
    )
    lines = logged.getvalue()
    assert lines.count("rpc refused") == len(answers)
    assert "Traceback" not in lines
    assert "rpc failed" not in lines


async def test_an_undecodable_batch_ends_a_usage_stream_after_the_acks_before_it(
    channel: grpc.aio.Channel, secrets_by_role: dict[Role, str]
) -> None:
    method = telemetry_pb.DESCRIPTOR.services_by_name["TelemetryService"].methods_by_name["StreamUsage"]
    first = telemetry_pb.StreamUsageRequest(batch_sequence=1, events=[usage_event()]).SerializeToString()
    answer = await _call_with(channel, method, [first, CORRUPT_WIRE], secrets_by_role)
    assert (answer.code, answer.responses) == (grpc.StatusCode.INVALID_ARGUMENT, 1)
    assert answer.details.startswith("requests[1]: is not a valid serialized meterwire.telemetry.v1.StreamUsageRequest")


async def test_a_caller_without_a_token_is_unauthenticated_whatever_its_body(channel: grpc.aio.Channel) -> None:
    method = admin_pb.DESCRIPTOR.services_by_name["AdminService"].methods_by_name["ListTokens"]
    answer = await call_raw(channel, method, [CORRUPT_WIRE], secret="not-a-meterwire-token")
    assert answer.code is grpc.StatusCode.UNAUTHENTICATED


HUGE = 1024 * 1024


def _method(module: object, service: str, name: str) -> MethodDescriptor:
    descriptor: MethodDescriptor = module.DESCRIPTOR.services_by_name[service].methods_by_name[name]  # type: ignore[attr-defined]
    return descriptor


@pytest.mark.parametrize(
    ("method", "request_message", "code", "field"),
    [
        (
            _method(admin_pb, "AdminService", "RevokeToken"),
            admin_pb.RevokeTokenRequest(token_id="x" * HUGE),
            grpc.StatusCode.NOT_FOUND,
            "token_id",
        ),
        (
            _method(admin_pb, "AdminService", "CreateEnvironment"),
            admin_pb.CreateEnvironmentRequest(environment=admin_pb.Environment(environment_id="é" * (HUGE // 2))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "environment.environment_id",
        ),
        (
            _method(config_pb, "ConfigService", "GetConfig"),
            config_pb.GetConfigRequest(environment_id="\u2603 " * (HUGE // 4)),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
        (
            _method(heartbeat_pb, "HeartbeatService", "GetGateway"),
            heartbeat_pb.GetGatewayRequest(environment_id="env-a", gateway_id="g" * HUGE),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
        (
            _method(reporting_pb, "ReportingService", "GetRequest"),
            reporting_pb.GetRequestRequest(environment_id="env-a", request_id="r" * HUGE),
            grpc.StatusCode.NOT_FOUND,
            "",
        ),
    ],
    ids=["revoke-token", "create-environment", "get-config", "get-gateway", "get-request"],
)
async def test_a_huge_id_comes_back_short_with_its_real_code_and_is_logged_short(
    channel: grpc.aio.Channel,
    secrets_by_role: dict[Role, str],
    method: MethodDescriptor,
    request_message: Message,
    code: grpc.StatusCode,
    field: str,
) -> None:
    with rendered_logs() as logged:
        answer = await _call_with(channel, method, [request_message.SerializeToString()], secrets_by_role)
    # Whole, the message would pass the client's 8 KiB metadata limit: RESOURCE_EXHAUSTED instead of the code.
    assert answer.code is code
    assert answer.details.startswith(field)
    assert len(answer.details.encode()) <= MAX_STATUS_DETAILS_BYTES
    assert "bytes cut" in answer.details
    lines = logged.getvalue()
    assert "rpc refused" in lines
    assert len(lines.encode()) < 4 * 1024
