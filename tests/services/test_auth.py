"""Every RPC is authenticated, needs its declared role, and stays inside the caller's environments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.admin.v1 import admin_service_pb2_grpc as admin_grpc
from meterwire.budget.v1 import budget_service_pb2 as budget_pb
from meterwire.budget.v1 import budget_service_pb2_grpc as budget_grpc
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as heartbeat_grpc
from meterwire.reporting.v1 import reporting_service_pb2 as reporting_pb
from meterwire.reporting.v1 import reporting_service_pb2_grpc as reporting_grpc
from meterwire.telemetry.v1 import telemetry_service_pb2 as telemetry_pb
from services.server import ControlPlane
from tests.clients import Tokens, bearer

_CONTROL_PLANE_METHODS: Final = [
    method
    for module in (admin_pb, budget_pb, config_pb, heartbeat_pb, reporting_pb, telemetry_pb)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
"""Every RPC the control plane serves, from the contracts (the agent's own AgentService is served by agents)."""


async def _code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    return failure.value.code(), failure.value.details() or ""


async def test_a_call_without_a_token_is_unauthenticated(channel: grpc.aio.Channel) -> None:
    code, details = await _code_of(
        admin_grpc.AdminServiceStub(channel).ListEnvironments(admin_pb.ListEnvironmentsRequest())
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization" in details


async def _call_without_a_token(channel: grpc.aio.Channel, method: MethodDescriptor) -> tuple[grpc.StatusCode, str]:
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_class, response_class = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
    serialize, deserialize = request_class.SerializeToString, response_class.FromString

    def one_request() -> Iterator[Any]:
        yield request_class()

    call: Any
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(path, serialize, deserialize)(one_request())
        reply = call.read()
    elif method.client_streaming:
        reply = channel.stream_unary(path, serialize, deserialize)(one_request())
    elif method.server_streaming:
        call = channel.unary_stream(path, serialize, deserialize)(request_class())
        reply = call.read()
    else:
        reply = channel.unary_unary(path, serialize, deserialize)(request_class())
    return await _code_of(reply)


async def test_every_rpc_refuses_a_call_without_a_token(channel: grpc.aio.Channel) -> None:
    # Built from the descriptors, so an RPC added later is covered without anyone remembering to.
    answers = {method.full_name: await _call_without_a_token(channel, method) for method in _CONTROL_PLANE_METHODS}
    assert len(answers) > 25
    wrong = {
        name: answer
        for name, answer in answers.items()
        if answer[0] is not grpc.StatusCode.UNAUTHENTICATED or "authorization" not in answer[1]
    }
    assert wrong == {}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer mw_0123456789ab_not-the-secret", "unknown token tok_0123456789ab"),
        ("Bearer not-a-meterwire-token", "not a meterwire token"),
        ("Basic dXNlcjpwYXNz", "Bearer <token>"),
    ],
)
async def test_a_bad_token_is_unauthenticated(channel: grpc.aio.Channel, header: str, expected: str) -> None:
    stub = admin_grpc.AdminServiceStub(channel)
    code, details = await _code_of(
        stub.ListEnvironments(admin_pb.ListEnvironmentsRequest(), metadata=(("authorization", header),))
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert expected in details


async def test_a_reporter_calling_an_admin_rpc_is_permission_denied(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    reporter = await tokens.reporter()
    stub = admin_grpc.AdminServiceStub(channel)
    code, details = await _code_of(
        stub.CreateToken(admin_pb.CreateTokenRequest(role=admin_pb.ROLE_ADMIN), metadata=bearer(reporter))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "needs a admin token; this is a reporter token" in details


async def test_a_gateway_token_cannot_reach_another_environment(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    for environment in ("env-a", "env-b"):
        await tokens.environment(environment)
    gateway_a = await tokens.gateway("env-a", "gw-1")
    config = config_grpc.ConfigServiceStub(channel)

    code, details = await _code_of(
        config.GetConfig(config_pb.GetConfigRequest(environment_id="env-b"), metadata=bearer(gateway_a))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "may not access environment 'env-b'" in details

    budget = budget_grpc.BudgetServiceStub(channel)
    code, _ = await _code_of(
        budget.CheckBudget(
            budget_pb.CheckBudgetRequest(request=budget_pb.RequestAttributes(environment_id="env-b")),
            metadata=bearer(gateway_a),
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED

    # Its own environment passes authorization and reaches the service (which has no config for it yet).
    code, details = await _code_of(
        config.GetConfig(config_pb.GetConfigRequest(environment_id="env-a"), metadata=bearer(gateway_a))
    )
    assert code is grpc.StatusCode.NOT_FOUND
    assert "env-a" in details


async def test_a_gateway_token_cannot_call_operator_rpcs(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("env-a")
    gateway_a = await tokens.gateway("env-a", "gw-1")
    reporting = reporting_grpc.ReportingServiceStub(channel)
    code, _ = await _code_of(
        reporting.GetUsageSummary(reporting_pb.GetUsageSummaryRequest(), metadata=bearer(gateway_a))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED


async def test_a_reporter_limited_to_one_environment_cannot_read_another(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    for environment in ("env-a", "env-b"):
        await tokens.environment(environment)
    reporter_a = await tokens.reporter("env-a")
    reporting = reporting_grpc.ReportingServiceStub(channel)
    request = reporting_pb.GetRequestRequest(environment_id="env-b", request_id="r1")
    code, details = await _code_of(reporting.GetRequest(request, metadata=bearer(reporter_a)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert "env-b" in details


async def test_a_revoked_token_is_refused_at_once(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    created = await tokens.create(admin_pb.ROLE_ADMIN)
    stub = admin_grpc.AdminServiceStub(channel)
    listed = await stub.ListEnvironments(admin_pb.ListEnvironmentsRequest(), metadata=bearer(created.secret))
    assert list(listed.environments) == []

    revoked = await stub.RevokeToken(
        admin_pb.RevokeTokenRequest(token_id=created.token.token_id), metadata=bearer(tokens.admin)
    )
    assert revoked.token.HasField("revoke_time")

    code, details = await _code_of(
        stub.ListEnvironments(admin_pb.ListEnvironmentsRequest(), metadata=bearer(created.secret))
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert f"token {created.token.token_id} was revoked" in details


async def test_revoking_a_token_closes_its_open_streams(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("env-a")
    created = await tokens.create(admin_pb.ROLE_GATEWAY, environment_id="env-a", gateway_id="gw-1")
    heartbeat = heartbeat_grpc.HeartbeatServiceStub(channel)
    outbox: asyncio.Queue[heartbeat_pb.HeartbeatRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[heartbeat_pb.HeartbeatRequest]:
        while (request := await outbox.get()) is not None:
            yield request

    stream = heartbeat.Heartbeat(requests(), metadata=bearer(created.secret))
    await outbox.put(heartbeat_pb.HeartbeatRequest(state=heartbeat_pb.AgentState(agent_version="0.1.0")))
    first = await stream.read()
    assert isinstance(first, heartbeat_pb.HeartbeatResponse)

    admin = admin_grpc.AdminServiceStub(channel)
    await admin.RevokeToken(admin_pb.RevokeTokenRequest(token_id=created.token.token_id), metadata=bearer(tokens.admin))
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await asyncio.wait_for(stream.read(), timeout=10)
    assert closed.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert f"token {created.token.token_id} was revoked; this stream is closed" == closed.value.details()
    await outbox.put(None)


async def test_a_token_revoked_on_another_replica_cannot_reconnect_from_a_cached_copy(
    control_plane: ControlPlane, channel: grpc.aio.Channel, tokens: Tokens, tmp_path: Path
) -> None:
    await tokens.environment("env-a")
    created = await tokens.create(admin_pb.ROLE_GATEWAY, environment_id="env-a", gateway_id="gw-1")
    heartbeat = heartbeat_grpc.HeartbeatServiceStub(channel)
    beat = heartbeat_pb.HeartbeatRequest(state=heartbeat_pb.AgentState(agent_version="0.1.0"))

    async def one_beat() -> AsyncIterator[heartbeat_pb.HeartbeatRequest]:
        yield beat
        await asyncio.Event().wait()  # keep the stream open: the server must end it

    stream = heartbeat.Heartbeat(one_beat(), metadata=bearer(created.secret))
    assert isinstance(await stream.read(), heartbeat_pb.HeartbeatResponse)  # the token is cached here now
    settings = control_plane.settings.model_copy(update={"data_dir": tmp_path / "replica"})
    async with ControlPlane(settings) as other, grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as elsewhere:
        admin = admin_grpc.AdminServiceStub(elsewhere)
        request = admin_pb.RevokeTokenRequest(token_id=created.token.token_id)
        await admin.RevokeToken(request, metadata=bearer(tokens.admin))
    await control_plane.deps.revocations.poll()  # what the revocation-poll job runs every interval
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await asyncio.wait_for(stream.read(), timeout=10)

    reconnect = heartbeat.Heartbeat(one_beat(), metadata=bearer(created.secret))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(reconnect.read(), timeout=10)

    assert closed.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert f"token {created.token.token_id} was revoked" in (refused.value.details() or "")


async def test_only_a_gateway_token_watches_budget_state(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    await tokens.environment("prod")
    gateway = await tokens.gateway("prod", "gw-1")
    budget = budget_grpc.BudgetServiceStub(channel)
    request = budget_pb.WatchBudgetStatesRequest(environment_id="prod")
    stream = budget.WatchBudgetStates(request, metadata=bearer(gateway))
    first = await stream.read()
    stream.cancel()
    assert isinstance(first, budget_pb.WatchBudgetStatesResponse)
    assert first.snapshot.HasField("snapshot_time")
    refused = budget.WatchBudgetStates(request, metadata=bearer(tokens.admin))
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await refused.read()
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
