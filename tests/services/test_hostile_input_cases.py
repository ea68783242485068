"""Hostile inputs the fuzz (test_fuzz_every_rpc.py) found answering INTERNAL, one narrow case each, kept as
regression tests now that each is refused with INVALID_ARGUMENT naming the field (or answered normally).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as heartbeat_pb
from services.auth import Role
from tests.clients import Tokens
from tests.services.rpc_calls import call_raw, caller_role


def _forged_token(position: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _method(module: Any, service: str, name: str) -> MethodDescriptor:
    descriptor: MethodDescriptor = module.DESCRIPTOR.services_by_name[service].methods_by_name[name]
    return descriptor


def _config_with_heartbeat_interval(seconds: int) -> config_pb.PutConfigRequest:
    config = config_pb.EnvironmentConfig()
    config.agent.heartbeat_interval.seconds = seconds
    return config_pb.PutConfigRequest(environment_id="env-a", config=config)


def _heartbeat_with_backlog(seconds: int) -> heartbeat_pb.HeartbeatRequest:
    request = heartbeat_pb.HeartbeatRequest(state=heartbeat_pb.AgentState())
    request.state.oldest_unsent_age.seconds = seconds
    return request


def _case(case_id: str, found: str, method: MethodDescriptor, request: Message) -> Any:
    """`found`: what the input did before it was fixed."""
    return pytest.param(method, request, id=case_id)


@pytest.mark.parametrize(
    ("method", "request_message"),
    [
        _case(
            "put-config-heartbeat-interval-1e15s",
            "config validation: Duration.ToTimedelta overflows (OverflowError) before the range check",
            _method(config_pb, "ConfigService", "PutConfig"),
            _config_with_heartbeat_interval(10**15),
        ),
        _case(
            "heartbeat-oldest-unsent-age-1e14s",
            "heartbeat status: oldest_unsent_age.ToTimedelta overflows in derive_status",
            _method(heartbeat_pb, "HeartbeatService", "Heartbeat"),
            _heartbeat_with_backlog(10**14),
        ),
        _case(
            "list-environments-token-without-after",
            "admin pagination: a token without 'after' raises KeyError",
            _method(admin_pb, "AdminService", "ListEnvironments"),
            admin_pb.ListEnvironmentsRequest(page_token=_forged_token({"x": 1})),
        ),
        _case(
            "list-tokens-token-without-after",
            "admin pagination: a token without 'after' raises KeyError",
            _method(admin_pb, "AdminService", "ListTokens"),
            admin_pb.ListTokensRequest(page_token=_forged_token({"t": 2**70})),
        ),
        _case(
            "list-gateways-token-after-a-number",
            "heartbeat pagination: an 'after' that is not a list raises TypeError",
            _method(heartbeat_pb, "HeartbeatService", "ListGateways"),
            heartbeat_pb.ListGatewaysRequest(page_token=_forged_token({"after": 5})),
        ),
    ],
)
async def test_a_hostile_input_found_by_the_fuzz_is_not_internal(
    channel: grpc.aio.Channel, tokens: Tokens, admin_secret: str, method: MethodDescriptor, request_message: Message
) -> None:
    await tokens.environment("env-a")
    secrets = {Role.ADMIN: admin_secret, Role.GATEWAY: await tokens.gateway("env-a", "gw-1")}
    answer = await call_raw(channel, method, [request_message.SerializeToString()], secret=secrets[caller_role(method)])
    assert answer.code not in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}, answer.details
