"""The agent's local AgentService refuses request bodies that do not decode with INVALID_ARGUMENT (issue 17)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway_agent import GatewayAgent
from gateway_agent.daemon import AgentDaemon
from meterwire.agent.v1 import agent_service_pb2 as agent_pb
from tests.gateway_agent.harness import agent_settings

_SERVICE = agent_pb.DESCRIPTOR.services_by_name["AgentService"]
_METHODS = sorted(_SERVICE.methods_by_name)
_BODIES = {
    "truncated": b"\x0a\xff\xff\xff\x0f",
    # Field 1 as length-delimited bytes that are not UTF-8: a bad string, or a bad nested message.
    "bad_utf8": b"\x0a\x02\xc3\x28",
}


def _has_length_delimited_field_1(method: str) -> bool:
    field = _SERVICE.methods_by_name[method].input_type.fields_by_number.get(1)
    return field is not None and field.type in (field.TYPE_STRING, field.TYPE_MESSAGE)


_CASES = [(method, "truncated") for method in _METHODS] + [
    (method, "bad_utf8") for method in _METHODS if _has_length_delimited_field_1(method)
]


@pytest.mark.parametrize(("method", "body"), _CASES)
async def test_an_undecodable_body_is_invalid_argument_on_every_agent_rpc(
    tmp_path: Path, method: str, body: str
) -> None:
    agent = GatewayAgent(
        agent_settings("127.0.0.1:9", "token", tmp_path, initial_fetch_timeout=timedelta(milliseconds=200))
    )
    socket = f"unix://{tmp_path}/agent.sock"
    descriptor = _SERVICE.methods_by_name[method]
    path = f"/{_SERVICE.full_name}/{method}"
    raw = _BODIES[body]
    async with AgentDaemon(agent, listen=socket), grpc.aio.insecure_channel(socket) as channel:

        async def requests() -> AsyncIterator[bytes]:
            yield raw

        call: Awaitable[Any] = (
            channel.stream_unary(path, None, None)(requests(), timeout=10)
            if descriptor.client_streaming
            else channel.unary_unary(path, None, None)(raw, timeout=10)
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        # The daemon still answers afterwards.
        status = await channel.unary_unary(
            f"/{_SERVICE.full_name}/GetStatus",
            request_serializer=agent_pb.GetStatusRequest.SerializeToString,
            response_deserializer=agent_pb.GetStatusResponse.FromString,
        )(agent_pb.GetStatusRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "is not a valid serialized meterwire.agent.v1." in (raised.value.details() or "")
    assert status.status.gateway_id
