"""Every repeated or map field of every request has a limit, and a request over one is INVALID_ARGUMENT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from meterwire.common.v1 import filter_pb2
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as reporting_grpc
from services.auth import Role
from services.request_limits import ENTRY_LIMITS, LIMITS_CHECKED_BY_SERVICE, MAX_FILTER_TAGS, plan_for
from tests.clients import Tokens, bearer
from tests.services.rpc_calls import CONTROL_PLANE_METHODS, call_raw, caller_role
from tests.telemetry.events import stamp


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeated_fields(descriptor: Descriptor, seen: set[str]) -> set[str]:
    found: set[str] = set()
    if descriptor.full_name in seen:
        return found
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        if field.is_repeated:
            found.add(field.full_name)
        if field.message_type is not None and not _is_map(field):
            found |= _repeated_fields(field.message_type, seen)
    return found


def test_every_repeated_field_of_every_request_has_exactly_one_limit() -> None:
    reachable = set().union(*(_repeated_fields(method.input_type, set()) for method in CONTROL_PLANE_METHODS))
    assert len(reachable) > 30
    assert reachable - ENTRY_LIMITS.keys() - LIMITS_CHECKED_BY_SERVICE.keys() == set()
    assert ENTRY_LIMITS.keys() & LIMITS_CHECKED_BY_SERVICE.keys() == set()
    # No stale entries: a limit for a field no request has any more would only mislead.
    assert (ENTRY_LIMITS.keys() | LIMITS_CHECKED_BY_SERVICE.keys()) - reachable == set()
    for method in CONTROL_PLANE_METHODS:
        plan_for(method.input_type)  # raises for a field missing from both tables


def _path_to(descriptor: Descriptor, target: str, seen: frozenset[str] = frozenset()) -> list[FieldDescriptor] | None:
    for field in descriptor.fields:
        if field.full_name == target:
            return [field]
    for field in descriptor.fields:
        inner = field.message_type
        if inner is not None and not _is_map(field) and inner.full_name not in seen:
            rest = _path_to(inner, target, seen | {descriptor.full_name})
            if rest is not None:
                return [field, *rest]
    return None


def _over_the_limit(method: MethodDescriptor, target: str, entries: int) -> tuple[Message, str]:
    """A request of `method` whose field `target` holds `entries` entries, and that field's path."""
    path = _path_to(method.input_type, target)
    assert path is not None
    request = GetMessageClass(method.input_type)()
    message, names = request, []
    for field in path[:-1]:
        names.append(field.name + ("[0]" if field.is_repeated else ""))
        message = getattr(message, field.name).add() if field.is_repeated else getattr(message, field.name)
    last = path[-1]
    names.append(last.name)
    values = getattr(message, last.name)
    for index in range(entries):
        if _is_map(last):
            value_field = last.message_type.fields_by_name["value"]  # type: ignore[union-attr]
            values[f"k{index}"] = "v" if value_field.type == FieldDescriptor.TYPE_STRING else 1
        elif last.type == FieldDescriptor.TYPE_MESSAGE:
            values.add()
        elif last.type == FieldDescriptor.TYPE_STRING:
            values.append(f"value-{index}")
        else:
            values.append(1)
    return request, ".".join(names)


def _a_method_reaching(target: str) -> MethodDescriptor:
    return next(method for method in CONTROL_PLANE_METHODS if _path_to(method.input_type, target) is not None)


@pytest.fixture
async def secrets_by_role(tokens: Tokens, admin_secret: str) -> dict[Role, str]:
    await tokens.environment("env-a")
    return {Role.ADMIN: admin_secret, Role.GATEWAY: await tokens.gateway("env-a", "gw-1")}


async def test_a_request_over_any_limit_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, secrets_by_role: dict[Role, str]
) -> None:
    answers, expected = {}, {}
    for target, limit in ENTRY_LIMITS.items():
        method = _a_method_reaching(target)
        request, path = _over_the_limit(method, target, limit + 1)
        answer = await call_raw(
            channel, method, [request.SerializeToString()], secret=secrets_by_role[caller_role(method)]
        )
        answers[target] = (answer.code, answer.details)
        in_stream = "requests[0]." if method.client_streaming else ""
        expected[target] = (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{in_stream}{path}: has {limit + 1} entries; at most {limit} are allowed",
        )
    assert answers == expected


def _summary_request(tags: int) -> reporting_pb.GetUsageSummaryRequest:
    now = datetime.now(UTC)
    usage_filter = filter_pb2.UsageFilter(start_time=stamp(now - timedelta(days=1)), end_time=stamp(now))
    usage_filter.tags.extend(filter_pb2.TagMatch(key=f"key-{i}", value="x") for i in range(tags))
    return reporting_pb.GetUsageSummaryRequest(filter=usage_filter)


async def test_a_thousand_tag_filters_are_invalid_argument_and_the_most_allowed_are_answered(
    channel: grpc.aio.Channel, admin_secret: str
) -> None:
    stub = reporting_grpc.ReportingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetUsageSummary(_summary_request(1000), metadata=bearer(admin_secret))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"filter.tags: has 1000 entries; at most {MAX_FILTER_TAGS} are allowed"

    answer = await stub.GetUsageSummary(_summary_request(MAX_FILTER_TAGS), metadata=bearer(admin_secret))
    assert answer.summary.requests == 0
