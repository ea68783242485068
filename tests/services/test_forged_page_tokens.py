"""Forged page tokens in the List RPCs paged by admin, config and the fleet: INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from meterwire.admin.v1 import admin_service_pb2 as admin_pb
from meterwire.admin.v1 import admin_service_pb2_grpc as admin_grpc
from meterwire.config.v1 import config_service_pb2 as config_pb
from meterwire.config.v1 import config_service_pb2_grpc as config_grpc
from meterwire.heartbeat.v1 import heartbeat_service_pb2 as hb_pb
from meterwire.heartbeat.v1 import heartbeat_service_pb2_grpc as hb_grpc
from tests.clients import Tokens, bearer


def _token(position: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


_FORGED = [
    _token({"x": 1}),
    _token({"after": 5}),
    _token({"before": "5"}),
    _token({"t": 2**70}),
    _token({"before": 2**70}),
    _token({"after": ["a"]}),
    _token([1, 2]),
    "not base64 !",
]


@pytest.mark.parametrize("token", _FORGED)
async def test_a_forged_page_token_is_invalid_argument_in_every_list(
    channel: grpc.aio.Channel, tokens: Tokens, token: str
) -> None:
    await tokens.environment("prod")
    stubs = (
        lambda m: admin_grpc.AdminServiceStub(channel).ListEnvironments(
            admin_pb.ListEnvironmentsRequest(page_token=token), metadata=m
        ),
        lambda m: admin_grpc.AdminServiceStub(channel).ListTokens(
            admin_pb.ListTokensRequest(page_token=token), metadata=m
        ),
        lambda m: config_grpc.ConfigServiceStub(channel).ListConfigVersions(
            config_pb.ListConfigVersionsRequest(environment_id="prod", page_token=token), metadata=m
        ),
        lambda m: hb_grpc.HeartbeatServiceStub(channel).ListGateways(
            hb_pb.ListGatewaysRequest(page_token=token), metadata=m
        ),
    )
    codes = []
    for call in stubs:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call(bearer(tokens.admin))
        codes.append((failure.value.code(), (failure.value.details() or "").split(":")[0]))
    assert codes == [(grpc.StatusCode.INVALID_ARGUMENT, "page_token")] * 4
